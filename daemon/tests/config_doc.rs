//! The node config example in docs/CONFIGURATION.md is parsed by the real
//! loader, so the documentation cannot drift from what the daemon reads.
use std::path::Path;

use mosix_daemon::config::{Config, Export};

const DOC: &str = include_str!("../../docs/CONFIGURATION.md");
const MARKER: &str = "<!-- node.toml example";

/// The first ```toml block after `after` in the doc, verbatim.
fn toml_block_after(after: &str) -> &'static str {
    let from = DOC
        .find(after)
        .unwrap_or_else(|| panic!("{after:?} not found in docs/CONFIGURATION.md"));
    let rest = &DOC[from..];
    let start = rest.find("```toml\n").expect("a ```toml block") + "```toml\n".len();
    let len = rest[start..].find("```").expect("end of the block");
    &rest[start..start + len]
}

fn load(text: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("node.toml");
    std::fs::write(&p, text).unwrap();
    Config::load(&p).unwrap_or_else(|e| panic!("the documented config does not load: {e}\n{text}"))
}

/// Every key of a table, as dotted paths.
fn keys(v: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in v {
        let path = format!("{prefix}{k}");
        if let toml::Value::Table(t) = v {
            keys(t, &format!("{path}."), out);
        }
        out.push(path);
    }
}

#[test]
fn the_documented_config_loads_and_shows_every_key() {
    let text = toml_block_after(MARKER);
    let c = load(text);
    assert_eq!(c.name, "n1");
    assert_eq!(c.id, Some(1));
    assert_eq!(c.listen, "10.0.0.1:7700".parse().unwrap());
    assert!(c.mount, "`mount` must be read as a top-level key");
    assert_eq!(c.mountpoint, Path::new("/mosix"));
    assert_eq!(c.tls.ca, Path::new("/etc/mosix/ca.pem"));
    assert_eq!(c.tls.key, Path::new("/etc/mosix/n1.key"));
    // The documented values of optional keys are their defaults.
    assert_eq!(c.export, Export::default());

    // Every key the daemon knows appears in the example.
    let doc: toml::Table = toml::from_str(text).unwrap();
    let known: toml::Table = toml::from_str(&c.to_toml()).unwrap();
    let (mut documented, mut all) = (Vec::new(), Vec::new());
    keys(&doc, "", &mut documented);
    keys(&known, "", &mut all);
    let missing: Vec<&String> = all.iter().filter(|k| !documented.contains(k)).collect();
    assert!(
        missing.is_empty(),
        "keys missing from the doc example: {missing:?}"
    );
}

#[test]
fn the_deploying_steps_config_loads_and_uses_the_files_they_copy() {
    let text = toml_block_after("**4. Write the node's config**");
    let c = load(text);
    assert_eq!(c.name, "n1");
    // Step 3 copies ca.pem, n1.pem and n1.key into /etc/mosix/.
    assert!(DOC.contains("root@10.0.0.1:/etc/mosix/"));
    for (file, path) in [
        ("ca.pem", &c.tls.ca),
        ("n1.pem", &c.tls.cert),
        ("n1.key", &c.tls.key),
    ] {
        assert_eq!(path, &Path::new("/etc/mosix").join(file));
        assert!(
            DOC.contains(&format!("~/mosix-pki/{file}")),
            "step 3 does not copy {file}"
        );
    }
    // Step 2 creates them where step 3 takes them from.
    assert!(DOC.contains("mosix cluster init --dir ~/mosix-pki --nodes n1,n2,n3"));
}

#[test]
fn a_key_after_a_table_is_refused() {
    // The mistake the doc example once had: `mount` after [tls] belongs to tls.
    let text = "name = \"n1\"\nlisten = \"10.0.0.1:7700\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\nmount = true\n";
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("node.toml");
    std::fs::write(&p, text).unwrap();
    let e = Config::load(&p).unwrap_err().to_string();
    assert!(e.contains("mount"), "{e}");
}
