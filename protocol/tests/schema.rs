//! The committed JSON Schemas in `docs/schema/` match the types.
//!
//! Regenerate with `MMRT_UPDATE_SCHEMA=1 cargo test -p mmrt-protocol --test schema`.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/schema")
}

#[test]
fn committed_schemas_match_generated() {
    let dir = schema_dir();
    let update = std::env::var_os("MMRT_UPDATE_SCHEMA").is_some();
    let generated = mmrt_protocol::schema::all_schemas();

    if update {
        fs::create_dir_all(&dir).expect("create docs/schema");
        for entry in fs::read_dir(&dir).expect("read docs/schema") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_some_and(|ext| ext == "json") {
                fs::remove_file(&path).expect("remove stale schema");
            }
        }
        for (name, schema) in &generated {
            let text = serde_json::to_string_pretty(schema).expect("schema serializes") + "\n";
            fs::write(dir.join(name), text).expect("write schema");
        }
    }

    let mut stale = Vec::new();
    for (name, schema) in &generated {
        let committed = fs::read_to_string(dir.join(name))
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
        // Compare values, not text, so key order never matters.
        if committed.as_ref() != Some(schema) {
            stale.push(name.clone());
        }
    }
    let expected: BTreeSet<_> = generated.iter().map(|(name, _)| name.clone()).collect();
    let extra: Vec<_> = fs::read_dir(&dir)
        .expect("docs/schema exists")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".json") && !expected.contains(name))
        .collect();
    assert!(
        stale.is_empty() && extra.is_empty(),
        "docs/schema is out of date (changed or missing: {stale:?}, extra: {extra:?}); \
         run MMRT_UPDATE_SCHEMA=1 cargo test -p mmrt-protocol --test schema"
    );
}
