use prost_reflect::Kind;
fn main() {
    let pool = legate_api::descriptors::pool();
    for name in std::env::args().skip(1) {
        let Some(m) = pool.get_message_by_name(&name) else {
            println!("{name}: MISSING");
            continue;
        };
        let fields: Vec<String> = m
            .fields()
            .map(|f| match f.kind() {
                Kind::Message(k) => format!("{}:{}", f.name(), k.name()),
                Kind::Enum(e) => format!("{}:{}", f.name(), e.name()),
                _ => f.name().to_string(),
            })
            .collect();
        println!("{name}: {}", fields.join(" "));
    }
}
