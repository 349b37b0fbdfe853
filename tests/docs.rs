//! The README's front-page facts stay true to the code: its configuration table against
//! `config/default.toml` and the reload rules (`planfeed::reload::effect`), its dependency table
//! against `Cargo.toml`, and every relative link of the README and `docs/` against the files and
//! headings it names. Reads only files of this repository.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use config::{Config, File, FileFormat, Value, ValueKind};
use planfeed::reload::{effect, Effect};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn toml(text: &str) -> Config {
    Config::builder().add_source(File::from_str(text, FileFormat::Toml)).build().expect("valid TOML")
}

/// The body rows of the first table under the heading `## {heading}`, split into trimmed cells.
fn table(markdown: &str, heading: &str) -> Vec<Vec<String>> {
    let start = markdown
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("README has no section `## {heading}`"));
    let rows: Vec<Vec<String>> = markdown[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // the header and its `|---|` line
        .map(|l| l.trim_matches('|').split(" | ").map(|c| c.trim().to_string()).collect())
        .collect();
    assert!(!rows.is_empty(), "no table under `## {heading}`");
    rows
}

/// One key of the README's configuration table.
#[derive(Debug)]
struct Row {
    key: String,
    /// The TOML literal of its default, `None` for a key that is unset by default (`—`).
    default: Option<String>,
    live: bool,
}

/// `a.b.c` / `d` (keys after the first are relative to its section), defaults and reload cells
/// split the same way; one reload value may stand for every key of the row.
fn config_rows(readme: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    for cells in table(readme, "Configuration") {
        assert_eq!(cells.len(), 4, "a row is `| key | default | reload | meaning |`: {cells:?}");
        let keys: Vec<&str> = cells[0].split(" / ").map(|k| k.trim_matches('`')).collect();
        let section = keys[0].rsplit_once('.').map_or("", |(s, _)| s);
        let full = |k: &str| {
            if k == keys[0] || section.is_empty() {
                k.to_string()
            } else {
                format!("{section}.{k}")
            }
        };
        let defaults: Vec<Option<String>> = match cells[1].as_str() {
            "—" => vec![None; keys.len()],
            cell => cell
                .split(" / ")
                .map(|d| {
                    let literal = d.strip_prefix('`').and_then(|d| d.strip_suffix('`'));
                    Some(
                        literal
                            .unwrap_or_else(|| panic!("default {d:?} of {keys:?} is not a `literal`"))
                            .to_string(),
                    )
                })
                .collect(),
        };
        let reloads: Vec<&str> = cells[2].split(" / ").collect();
        assert_eq!(defaults.len(), keys.len(), "one default per key: {cells:?}");
        assert!(
            reloads.len() == 1 || reloads.len() == keys.len(),
            "one reload cell, or one per key: {cells:?}"
        );
        for (i, key) in keys.iter().enumerate() {
            let reload = reloads[if reloads.len() == 1 { 0 } else { i }];
            assert!(
                matches!(reload, "live" | "restart"),
                "reload of {key} is `live` or `restart`, got {reload:?}"
            );
            rows.push(Row { key: full(key), default: defaults[i].clone(), live: reload == "live" });
        }
    }
    rows
}

/// Every table of `value`, as dotted paths (`server`, `server.connections`, …), and the scalar
/// keys at the root.
fn sections(prefix: &str, value: &Value, tables: &mut BTreeSet<String>, root_scalars: &mut BTreeSet<String>) {
    let ValueKind::Table(map) = &value.kind else { return };
    for (name, child) in map {
        let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        match &child.kind {
            ValueKind::Table(_) => {
                tables.insert(path.clone());
                sections(&path, child, tables, root_scalars);
            }
            _ if prefix.is_empty() => {
                root_scalars.insert(path);
            }
            _ => {}
        }
    }
}

#[test]
fn the_readme_configuration_table_states_the_defaults_and_reload_rules_of_default_toml() {
    let readme = read("README.md");
    let default_toml = read("config/default.toml");
    let defaults = toml(&default_toml);
    let rows = config_rows(&readme);
    let mut seen = BTreeSet::new();
    for row in &rows {
        assert!(seen.insert(row.key.clone()), "{} is listed twice", row.key);
        if row.key == "[[providers]]" {
            assert!(
                default_toml.contains("\n# [[providers]]\n"),
                "default.toml shows a commented [[providers]] example"
            );
            assert_eq!(effect("providers"), Effect::Restart, "adding or removing providers needs a restart");
            assert!(!row.live, "[[providers]] is `restart`");
            continue;
        }
        let live = matches!(effect(&row.key), Effect::Live(_));
        let word = |live: bool| if live { "live" } else { "restart" };
        assert_eq!(
            row.live,
            live,
            "{}: the README says {}, src/reload.rs {}",
            row.key,
            word(row.live),
            word(live)
        );
        let leaf = row.key.rsplit('.').next().expect("a key");
        match &row.default {
            Some(literal) => {
                let stated = toml(&format!("v = {literal}")).get::<Value>("v").expect("the literal").kind;
                let actual = defaults
                    .get::<Value>(&row.key)
                    .unwrap_or_else(|e| {
                        panic!("{} is in the README but not in config/default.toml: {e}", row.key)
                    })
                    .kind;
                assert_eq!(stated, actual, "{}: the README states {literal}", row.key);
            }
            None => {
                assert!(
                    defaults.get::<Value>(&row.key).is_err(),
                    "{} is set in default.toml: state its default",
                    row.key
                );
                assert!(
                    default_toml.lines().any(|l| l.starts_with(&format!("# {leaf} = "))),
                    "{}: unset by default, but default.toml shows no commented example `# {leaf} = …`",
                    row.key
                );
            }
        }
    }
    // What must be listed: every section of default.toml (at least one of its keys) and every key
    // at its root, so a newcomer sees each part of the configuration.
    let (mut tables, mut root_scalars) = (BTreeSet::new(), BTreeSet::new());
    sections("", &defaults.cache, &mut tables, &mut root_scalars);
    assert!(
        tables.len() >= 10 && root_scalars.contains("role"),
        "default.toml parsed: {tables:?} {root_scalars:?}"
    );
    for table in &tables {
        assert!(
            rows.iter().any(|r| r.key.rsplit_once('.').is_some_and(|(s, _)| s == table)),
            "the README's configuration table lists no key of [{table}]"
        );
    }
    for key in &root_scalars {
        assert!(seen.contains(key), "the README's configuration table does not list `{key}`");
    }
}

#[test]
fn every_dependency_of_cargo_toml_is_in_the_readme_with_why() {
    let readme = read("README.md");
    let named: BTreeSet<String> = table(&readme, "Dependencies")
        .iter()
        .flat_map(|cells| {
            assert!(cells.len() == 2 && !cells[1].is_empty(), "a row is `| crates | why |`: {cells:?}");
            cells[0]
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    let manifest = toml(&read("Cargo.toml"));
    let mut crates = Vec::new();
    for section in ["dependencies", "dev-dependencies"] {
        let table = manifest.get::<Value>(section).expect(section).into_table().expect("a table");
        assert!(!table.is_empty(), "{section}");
        crates.extend(table.into_keys());
    }
    let missing: Vec<&String> = crates.iter().filter(|c| !named.contains(*c)).collect();
    assert!(missing.is_empty(), "README, Dependencies: no row says why planfeed depends on {missing:?}");
}

#[test]
fn the_readme_stays_a_front_page() {
    let lines = read("README.md").lines().count();
    assert!(lines <= 250, "README.md has {lines} lines: move detail into docs/ (at most 250)");
}

/// GitHub's anchor of a heading: lowercase, punctuation dropped, spaces to `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The targets of the inline links `](target)` in `text`.
fn links(text: &str) -> Vec<String> {
    text.match_indices("](")
        .filter_map(|(i, _)| text[i + 2..].split_once(')').map(|(t, _)| t.to_string()))
        .collect()
}

fn anchors_of(file: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut in_code = false;
    let mut anchors = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            anchors.insert(anchor(line.trim_start_matches('#')));
        }
    }
    anchors
}

#[test]
fn relative_links_of_the_readme_and_docs_name_existing_files_and_headings() {
    let mut pages = vec![repo().join("README.md")];
    for dir in ["docs", "docs/adr"] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
            .expect(dir)
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
            .collect();
        found.sort();
        pages.extend(found);
    }
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).expect("page");
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = link.split_once('#').unwrap_or((&link, ""));
            let target = if path.is_empty() { page.clone() } else { page.parent().expect("dir").join(path) };
            let ok = target.exists()
                && (fragment.is_empty()
                    || target.extension().is_none_or(|e| e != "md")
                    || anchors_of(&target).contains(fragment));
            if !ok {
                broken.push(format!("{}: {link}", page.strip_prefix(repo()).unwrap_or(page).display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links: {broken:#?}");
}
