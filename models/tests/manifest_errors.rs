//! A bundle with a mistake fails to load with a message that names the file, the
//! tensor and what was expected: one test per kind of mistake, each on a copy of the
//! default bundle with one thing changed.

use std::path::{Path, PathBuf};

use mmrt_models::{default_bundle_dir, Bundle, ModelError, RuntimeConfig};

/// Copies the default bundle into a temporary folder and applies `edit` to its
/// manifest text.
fn bundle_with(edit: impl Fn(String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_dir(&default_bundle_dir(), dir.path());
    let manifest = dir.path().join("bundle.toml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit must change the manifest");
    std::fs::write(&manifest, edited).expect("write manifest");
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("bundle dir") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

fn load_error(dir: &Path) -> (String, ModelError) {
    let err = Bundle::load(dir, &RuntimeConfig::from_env()).expect_err("bundle must not load");
    (err.to_string(), err)
}

/// Replaces the first occurrence of `from` after the line `section`.
fn replace_in_section(text: &str, section: &str, from: &str, to: &str) -> String {
    let start = text.find(section).expect("section present");
    let offset = text[start..].find(from).expect("text present in section") + start;
    format!("{}{}{}", &text[..offset], to, &text[offset + from.len()..])
}

#[test]
fn the_default_bundle_loads() {
    let bundle = Bundle::load(&default_bundle_dir(), &RuntimeConfig::from_env()).expect("loads");
    assert_eq!(bundle.decoder.graph().provider(), "cpu");
}

#[test]
fn a_wrong_input_tensor_name_is_named() {
    let dir = bundle_with(|t| {
        replace_in_section(
            &t,
            "[decoder]",
            "attention_mask = \"attention_mask\"",
            "attention_mask = \"attn_mask\"",
        )
    });
    let (msg, err) = load_error(dir.path());
    assert!(matches!(err, ModelError::Graph { .. }), "{msg}");
    assert!(msg.contains("decoder.onnx"), "{msg}");
    assert!(msg.contains("attn_mask"), "{msg}");
    assert!(
        msg.contains("attention_mask"),
        "lists the graph's inputs: {msg}"
    );
}

#[test]
fn a_wrong_output_tensor_name_is_named() {
    let dir = bundle_with(|t| {
        replace_in_section(
            &t,
            "[encoders.image]",
            "name = \"embeds\"",
            "name = \"features\"",
        )
    });
    let (msg, _) = load_error(dir.path());
    assert!(
        msg.contains("image_encoder.onnx") && msg.contains("features"),
        "{msg}"
    );
}

#[test]
fn a_wrong_shape_shows_expected_and_found() {
    let dir = bundle_with(|t| replace_in_section(&t, "[encoders.audio]", "32, 40]", "32, 80]"));
    let (msg, _) = load_error(dir.path());
    assert!(
        msg.contains("audio_encoder.onnx") && msg.contains("mel"),
        "{msg}"
    );
    assert!(
        msg.contains("[batch, 32, 80]") && msg.contains("40]"),
        "{msg}"
    );
}

#[test]
fn a_wrong_type_is_named() {
    let dir = bundle_with(|t| {
        replace_in_section(&t, "[encoders.text]", "dtype = \"i64\"", "dtype = \"f32\"")
    });
    let (msg, _) = load_error(dir.path());
    assert!(
        msg.contains("text_embed.onnx") && msg.contains("input_ids"),
        "{msg}"
    );
    assert!(msg.contains("type"), "{msg}");
}

#[test]
fn a_wrong_kv_layout_is_named() {
    let dir =
        bundle_with(|t| replace_in_section(&t, "[decoder]", "num_kv_heads = ", "num_kv_heads = 1"));
    let (msg, _) = load_error(dir.path());
    assert!(msg.contains("past_key_values.0.key"), "{msg}");
}

#[test]
fn too_many_layers_names_the_missing_cache_tensor() {
    let dir = bundle_with(|t| {
        let start = t.find("num_layers = ").expect("num_layers");
        let end = start + t[start..].find('\n').expect("line end");
        format!("{}num_layers = 9{}", &t[..start], &t[end..])
    });
    let (msg, _) = load_error(dir.path());
    assert!(
        msg.contains("past_key_values.") && msg.contains("decoder.onnx"),
        "{msg}"
    );
}

#[test]
fn a_checksum_mismatch_names_the_file() {
    let dir = bundle_with(|t| {
        let start = t.find("[decoder]").expect("decoder");
        let at = t[start..].find("sha256 = \"").expect("sha") + start + 10;
        let flipped = if &t[at..at + 1] == "0" { "1" } else { "0" };
        format!("{}{}{}", &t[..at], flipped, &t[at + 1..])
    });
    let (msg, err) = load_error(dir.path());
    assert!(matches!(err, ModelError::BundleFile { .. }), "{msg}");
    assert!(
        msg.contains("decoder.onnx") && msg.contains("sha256"),
        "{msg}"
    );
}

#[test]
fn a_missing_file_is_named() {
    let dir = bundle_with(|t| t.replace("file = \"completion.onnx\"", "file = \"complete.onnx\""));
    let (msg, _) = load_error(dir.path());
    assert!(msg.contains("complete.onnx"), "{msg}");
}

#[test]
fn a_file_outside_the_bundle_is_refused() {
    let dir =
        bundle_with(|t| t.replace("file = \"tokenizer.json\"", "file = \"../tokenizer.json\""));
    let (msg, _) = load_error(dir.path());
    assert!(msg.contains("relative to the bundle folder"), "{msg}");
}

#[test]
fn an_unknown_template_slot_is_refused() {
    let dir = bundle_with(|t| t.replace("\"{audio}\"", "\"{video}\""));
    let (msg, err) = load_error(dir.path());
    assert!(matches!(err, ModelError::Manifest { .. }), "{msg}");
    assert!(msg.contains("{video}"), "{msg}");
}

#[test]
fn an_unknown_field_is_refused() {
    let dir = bundle_with(|t| t.replace("hidden_size = ", "hiden = 1\nhidden_size = "));
    let (msg, _) = load_error(dir.path());
    assert!(msg.contains("hiden"), "{msg}");
}

#[test]
fn a_newer_format_is_refused() {
    let dir = bundle_with(|t| t.replace("format = 1", "format = 2"));
    let (msg, _) = load_error(dir.path());
    assert!(msg.contains("format 2"), "{msg}");
}

#[test]
fn a_hidden_size_mismatch_is_refused() {
    let dir = bundle_with(|t| t.replace("hidden_size = 128", "hidden_size = 64"));
    let (msg, _) = load_error(dir.path());
    assert!(msg.contains("hidden_size"), "{msg}");
}

#[test]
fn a_special_token_missing_from_the_tokenizer_is_named() {
    let dir = bundle_with(|t| t.replace("eos = \"<eos>\"", "eos = \"</s>\""));
    let (msg, err) = load_error(dir.path());
    assert!(matches!(err, ModelError::Tokenizer(_)), "{msg}");
    assert!(msg.contains("</s>"), "{msg}");
}

#[test]
fn bad_audio_features_are_refused() {
    let dir = bundle_with(|t| t.replace("f_max = 8000.0", "f_max = 12000.0"));
    let (msg, _) = load_error(dir.path());
    assert!(
        msg.contains("f_max") || msg.contains("sample_rate/2"),
        "{msg}"
    );
}

#[test]
fn a_missing_bundle_folder_is_named() {
    let missing = PathBuf::from("/nonexistent/bundle");
    let (msg, _) = load_error(&missing);
    assert!(msg.contains("/nonexistent/bundle/bundle.toml"), "{msg}");
}
