//! The controller's layering, checked: every `crate::…` import in its production code goes to a module of a lower
//! layer of the table in docs/ARCHITECTURE.md (between `<!-- layers -->` and `<!-- /layers -->`), the one place the
//! order lives; inside `store/`, every `super::…` import of one domain file from another likewise (the table between
//! `<!-- layers store -->` and `<!-- /layers -->`). Test code (`#[cfg(test)]` items and `tests.rs` files) is not
//! checked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Module name → layer, from the document's table marked `marker` (`<!-- layers -->`).
fn layers(doc: &str, marker: &str) -> BTreeMap<String, u32> {
    let start = doc.find(marker).unwrap_or_else(|| panic!("docs/ARCHITECTURE.md has no {marker} table"));
    let end = start + doc[start..].find("<!-- /layers -->").expect("a layer table ends with <!-- /layers -->");
    let mut table = BTreeMap::new();
    for line in doc[start..end].lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, layer, modules, _] = cells.as_slice() else { continue };
        let Ok(layer) = layer.parse::<u32>() else { continue };
        for module in modules.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            assert!(table.insert(module.to_owned(), layer).is_none(), "{module} is in the layer table twice");
        }
    }
    assert!(!table.is_empty(), "the layer table is empty");
    table
}

/// The source without `#[cfg(test)]` items (a module, a function, a `use`, a `mod x;`).
fn production_code(source: &str) -> String {
    let mut out = String::new();
    let mut rest = source;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at + "#[cfg(test)]".len()..];
        let semicolon = item.find(';').unwrap_or(item.len());
        let brace = item.find('{').unwrap_or(item.len());
        let end = if semicolon < brace {
            semicolon + 1
        } else {
            let mut depth = 0;
            let mut end = item.len();
            for (i, c) in item.char_indices().skip(brace) {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            end
        };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

fn identifier(text: &str) -> &str {
    let end = text.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(text.len());
    &text[..end]
}

/// The first path segment of every `prefix…` reference (`crate::{a, b::c}` gives a and b).
fn imports(code: &str, prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        if rest[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
            rest = &rest[at + prefix.len()..];
            continue; // `self::super::`, `a_crate::`: not this prefix
        }
        rest = &rest[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut item_start) = (1, 0);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' | ',' if depth == 1 => {
                        found.push(identifier(group[item_start..i].trim_start()).to_owned());
                        item_start = i + 1;
                        if c == '}' {
                            break;
                        }
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
        } else {
            found.push(identifier(rest).to_owned());
        }
    }
    found.retain(|name| !name.is_empty() && name != "self");
    found
}

/// Every import against the table, as "file: a (layer N) imports b (layer M)": the modules are the entries of
/// `root`, their imports the references that start with one of `prefixes`; a name that is no module is the root's
/// own (`root` is "lib", or exempt with `root_own = None`).
fn violations(root: &Path, table: &BTreeMap<String, u32>, prefixes: &[&str], root_own: Option<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut files = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") && path.file_name().unwrap() != "tests.rs" {
                files.push(path);
            }
        }
    }
    let modules: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for file in files {
        let relative = file.strip_prefix(root).unwrap();
        if root_own.is_none() && (relative.components().count() > 1 || relative == Path::new("mod.rs")) {
            continue; // inside a module directory: its files and their own submodules only
        }
        let first = relative.components().next().unwrap().as_os_str().to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        let Some(&layer) = table.get(&module) else {
            problems.push(format!("{}: module {module} is not in the layer table", relative.display()));
            continue;
        };
        let code = production_code(&std::fs::read_to_string(&file).unwrap());
        for target in prefixes.iter().flat_map(|prefix| imports(&code, prefix)) {
            // A name at the root that is not a module (a function, a macro, a type) is the root's own unless listed.
            let target = if modules.contains(&target) || table.contains_key(&target) {
                target
            } else {
                match root_own {
                    Some(own) => own.to_owned(),
                    None => continue,
                }
            };
            if target == module {
                continue;
            }
            match table.get(&target) {
                Some(&to) if to < layer => {}
                Some(&to) => problems.push(format!(
                    "{}: {module} (layer {layer}) imports {target} (layer {to}): imports go to lower layers only",
                    relative.display()
                )),
                None => problems.push(format!("{}: {target} is not in the layer table", relative.display())),
            }
        }
    }
    problems.sort();
    problems.dedup();
    problems
}

#[test]
fn the_controller_imports_only_from_lower_layers() {
    let doc = std::fs::read_to_string(workspace().join("docs/ARCHITECTURE.md")).unwrap();
    let problems =
        violations(&workspace().join("controller/src"), &layers(&doc, "<!-- layers -->"), &["crate::"], Some("lib"));
    assert!(problems.is_empty(), "imports against docs/ARCHITECTURE.md's layer table:\n{}", problems.join("\n"));
}

#[test]
fn the_stores_domain_files_import_only_from_lower_layers() {
    let doc = std::fs::read_to_string(workspace().join("docs/ARCHITECTURE.md")).unwrap();
    let table = layers(&doc, "<!-- layers store -->");
    let problems = violations(&workspace().join("controller/src/store"), &table, &["super::", "crate::store::"], None);
    assert!(problems.is_empty(), "imports against the store's layer table:\n{}", problems.join("\n"));
}

#[test]
fn the_check_finds_an_upward_import_a_sibling_import_and_an_unlisted_module() {
    let root = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let path = root.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("lib.rs", "pub mod store;\npub mod scheduler;\npub fn run() {}\n");
    write("store/mod.rs", "use crate::scheduler::Handle;\n#[cfg(test)]\nmod tests { use crate::grpc::X; }\n");
    write("scheduler/mod.rs", "use crate::{store::{self, Store}, metrics};\nfn f() { crate::run(); }\n");
    write("scheduler/tests.rs", "use crate::grpc::Anything;\n");
    write("metrics.rs", "use crate::store::Store;\n");
    write("stray.rs", "");
    let doc = "<!-- layers -->\n| layer | modules |\n|---|---|\n| 0 | store |\n| 1 | scheduler, metrics |\n| 2 | lib, run |\n<!-- /layers -->";
    let problems = violations(root.path(), &layers(doc, "<!-- layers -->"), &["crate::"], Some("lib"));
    assert_eq!(
        problems,
        [
            "scheduler/mod.rs: scheduler (layer 1) imports metrics (layer 1): imports go to lower layers only",
            "scheduler/mod.rs: scheduler (layer 1) imports run (layer 2): imports go to lower layers only",
            "store/mod.rs: store (layer 0) imports scheduler (layer 1): imports go to lower layers only",
            "stray.rs: module stray is not in the layer table",
        ],
        "test code is not checked"
    );
}
