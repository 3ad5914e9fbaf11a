//! What virtualenv a task needs, read from its args the same way on both sides: the agent builds and names
//! venvs by it, the controller places tasks on agents that already hold theirs. Pure; never touches the disk.

use std::collections::BTreeMap;
use std::fmt;

/// What a task asks for: a DataHub version (`None`/`native`: the agent's own CLI) and what to install with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VenvSpec {
    pub version: Option<String>,
    /// The recipe's source type (`mysql`, `file`, ...): the acryl-datahub extra to install.
    pub plugin: String,
    pub extra_requirements: Vec<String>,
    pub extra_plugins: Vec<String>,
}

/// The name of a built venv, `<plugin>-<16 hex digits>`: equal for equal specs on every agent.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VenvKey(String);

/// A ready venv an agent holds: what the agent finds on its disk, tells the controller, and operators see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldVenv {
    pub key: VenvKey,
    pub requirement: String,
    pub bytes: u64,
    pub last_used_ms: i64,
}

/// Why a venv key or spec is refused; the message is what the task log, the API caller or the operator sees.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("a venv key must be 1 to {MAX_KEY_LEN} characters")]
    KeyLength,
    #[error("venv key {0:?} has characters other than letters, digits, '-' and '_'")]
    KeyCharacters(String),
    #[error("{key} is not a JSON list of strings: {reason}")]
    NotAStringList { key: String, reason: String },
    #[error("{0:?} is not VERSION:PLUGIN (e.g. 1.7.0.17:mysql)")]
    NotAPair(String),
    #[error("{0:?} is not a DataHub version to build a venv for")]
    Version(String),
    #[error("{0:?} is not a source plugin name")]
    Plugin(String),
}

/// Longest key accepted from the wire.
pub const MAX_KEY_LEN: usize = 128;

impl VenvKey {
    /// A key as an agent reports it: `[A-Za-z0-9_-]`, at most [`MAX_KEY_LEN`] characters.
    pub fn parse(text: &str) -> Result<VenvKey, Invalid> {
        if text.is_empty() || text.len() > MAX_KEY_LEN {
            return Err(Invalid::KeyLength);
        }
        if !text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(Invalid::KeyCharacters(text.to_owned()));
        }
        Ok(VenvKey(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VenvKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// FNV-1a, 64 bits: a stable name for a venv's contents (not a security hash).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain([0u8]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

/// Characters allowed in a venv directory name.
fn sanitize(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// A JSON list of strings given as a string arg (empty string = empty list).
fn string_list(args: &BTreeMap<String, String>, key: &str) -> Result<Vec<String>, Invalid> {
    match args.get(key).map(String::as_str) {
        None | Some("") => Ok(Vec::new()),
        Some(text) => serde_json::from_str(text)
            .map_err(|e| Invalid::NotAStringList { key: key.to_owned(), reason: e.to_string() }),
    }
}

impl VenvSpec {
    /// The spec of a task whose recipe's source type is `plugin`: `version`, `extra_pip_requirements` and
    /// `extra_pip_plugins` from its args, as DataHub's executor reads them.
    pub fn from_args(plugin: String, args: &BTreeMap<String, String>) -> Result<VenvSpec, Invalid> {
        Ok(VenvSpec {
            version: args.get("version").cloned(),
            plugin,
            extra_requirements: string_list(args, "extra_pip_requirements")?,
            extra_plugins: string_list(args, "extra_pip_plugins")?,
        })
    }

    /// The venv a task's args need, if any: `None` for the agent's own CLI, and for args that do not parse
    /// (the agent reports those when it runs the task).
    pub fn key_of_task(args: &BTreeMap<String, String>) -> Option<VenvKey> {
        let recipe: serde_json::Value = serde_json::from_str(args.get("recipe")?).ok()?;
        let plugin = recipe.get("source")?.get("type")?.as_str()?.to_owned();
        let spec = VenvSpec::from_args(plugin, args).ok()?;
        (!spec.is_native()).then(|| spec.key())
    }

    /// `VERSION:PLUGIN` (a warm-up request).
    pub fn parse_pair(text: &str) -> Result<VenvSpec, Invalid> {
        let (version, plugin) = text.split_once(':').ok_or_else(|| Invalid::NotAPair(text.to_owned()))?;
        VenvSpec::pinned(version, plugin)
    }

    /// A pinned version with one plugin, both checked.
    pub fn pinned(version: &str, plugin: &str) -> Result<VenvSpec, Invalid> {
        let word = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c));
        if !word(version) || version == "native" {
            return Err(Invalid::Version(version.to_owned()));
        }
        if !word(plugin) {
            return Err(Invalid::Plugin(plugin.to_owned()));
        }
        Ok(VenvSpec {
            version: Some(version.to_owned()),
            plugin: plugin.to_owned(),
            extra_requirements: Vec::new(),
            extra_plugins: Vec::new(),
        })
    }

    pub fn is_native(&self) -> bool {
        self.version.as_deref().is_none_or(|v| v.is_empty() || v == "native")
    }

    pub fn key(&self) -> VenvKey {
        let version = self.version.as_deref().unwrap_or("");
        let requirements = self.extra_requirements.join("\n");
        let plugins = self.extra_plugins.join(",");
        VenvKey(format!("{}-{:016x}", sanitize(&self.plugin), fnv1a(&[version, &requirements, &plugins])))
    }

    /// The pip requirement for acryl-datahub with the extras the recipe needs.
    pub fn datahub_requirement(&self) -> String {
        let mut extras = vec![self.plugin.clone()];
        extras.extend(self.extra_plugins.iter().cloned());
        let extras = extras.join(",");
        match self.version.as_deref() {
            Some("latest") | None => format!("acryl-datahub[{extras}]"),
            Some(version) => format!("acryl-datahub[{extras}]=={}", version.trim_start_matches('v')),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(version: Option<&str>, plugins: &[&str]) -> VenvSpec {
        VenvSpec {
            version: version.map(str::to_owned),
            plugin: "mysql".into(),
            extra_requirements: vec![],
            extra_plugins: plugins.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn names_and_requirements() {
        assert!(spec(None, &[]).is_native());
        assert!(spec(Some("native"), &[]).is_native());
        let pinned = spec(Some("v1.7.0.17"), &["sql-queries"]);
        assert!(!pinned.is_native());
        assert_eq!(pinned.datahub_requirement(), "acryl-datahub[mysql,sql-queries]==1.7.0.17");
        assert_eq!(spec(Some("latest"), &[]).datahub_requirement(), "acryl-datahub[mysql]");
        let name = pinned.key();
        assert!(name.as_str().starts_with("mysql-") && name.as_str().len() == "mysql-".len() + 16, "{name}");
        assert_eq!(name, spec(Some("v1.7.0.17"), &["sql-queries"]).key(), "stable");
        assert_ne!(name, spec(Some("v1.7.0.16"), &["sql-queries"]).key());
        assert_ne!(name, spec(Some("v1.7.0.17"), &[]).key());
        assert_eq!(VenvKey::parse(name.as_str()), Ok(name));
    }

    #[test]
    fn the_controller_reads_the_same_key_from_a_tasks_args_as_the_agent_builds() {
        let mut args = BTreeMap::from([
            ("recipe".to_owned(), r#"{"source": {"type": "mysql", "config": {}}}"#.to_owned()),
            ("version".to_owned(), "v1.7.0.17".to_owned()),
            ("extra_pip_plugins".to_owned(), r#"["sql-queries"]"#.to_owned()),
        ]);
        assert_eq!(VenvSpec::key_of_task(&args), Some(spec(Some("v1.7.0.17"), &["sql-queries"]).key()));
        args.insert("version".into(), "native".into());
        assert_eq!(VenvSpec::key_of_task(&args), None, "the agent's own CLI needs no venv");
        args.insert("version".into(), "1.0".into());
        args.insert("recipe".into(), "not json".into());
        assert_eq!(VenvSpec::key_of_task(&args), None, "left to the agent to report");
    }

    #[test]
    fn warm_up_pairs_and_keys_from_the_wire_are_checked() {
        assert_eq!(VenvSpec::parse_pair("1.7.0.17:mysql").unwrap().key(), {
            let mut s = spec(Some("1.7.0.17"), &[]);
            s.plugin = "mysql".into();
            s.key()
        });
        assert_eq!(
            VenvSpec::parse_pair("1.7.0.17").unwrap_err().to_string(),
            "\"1.7.0.17\" is not VERSION:PLUGIN (e.g. 1.7.0.17:mysql)"
        );
        assert_eq!(
            VenvSpec::parse_pair("native:mysql").unwrap_err().to_string(),
            "\"native\" is not a DataHub version to build a venv for"
        );
        assert_eq!(
            VenvSpec::parse_pair("1.0:my sql").unwrap_err().to_string(),
            "\"my sql\" is not a source plugin name"
        );
        assert!(VenvKey::parse("../etc").is_err());
        assert!(VenvKey::parse(&"a".repeat(MAX_KEY_LEN + 1)).is_err());
    }
}
