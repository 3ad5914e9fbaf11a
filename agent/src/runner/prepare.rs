//! Turns a task's args into what the CLI needs, as DataHub's executor does: the recipe with `run_id` set to the
//! execution request id, the command line (`ingest run -c - --report-to F`, or `ingest -c -
//! --test-source-connection --report-to F`), extra environment variables, the memory limit, the venv request,
//! and — once secrets are resolved — the JSON envelope the CLI reads on stdin. Pure; errors are report lines.

use std::collections::BTreeMap;
use std::path::Path;

use outpost_common::task::{RUN_INGEST, TEST_CONNECTION};

use crate::secrets::Secrets;
use crate::venv;

/// The variable in `extra_env_vars` that limits the run's address space (bytes), as in DataHub.
pub const MEMORY_LIMIT_VAR: &str = "EXECUTOR_TASK_MEMORY_LIMIT";

/// Why a task's args cannot be run; the message is the error line of the task's report.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error("Failed to find task with name={0}")]
    UnknownTask(String),
    #[error("The task has no recipe argument")]
    NoRecipe,
    #[error("The recipe is not valid JSON: {0}")]
    RecipeNotJson(serde_json::Error),
    #[error("The recipe must be a JSON object")]
    RecipeNotObject,
    #[error("The recipe has no source.type")]
    NoSourceType,
    #[error("extra_env_vars is not a JSON object: {0}")]
    ExtraEnvNotObject(serde_json::Error),
    #[error("{MEMORY_LIMIT_VAR} must be a number of bytes, not {0:?}")]
    MemoryLimit(String),
    #[error(transparent)]
    Venv(#[from] outpost_common::venv::Invalid),
}

/// A run, ready to start once its secrets are resolved.
#[derive(Debug)]
pub struct Prepared {
    /// The recipe as JSON text (JSON is YAML), `${NAME}` references unresolved.
    pub recipe: String,
    /// Arguments after the `datahub` executable.
    pub argv: Vec<String>,
    /// Variables added to the agent's environment for the CLI.
    pub env: BTreeMap<String, String>,
    pub test_connection: bool,
    pub debug: bool,
    /// RLIMIT_AS for the CLI, in bytes.
    pub memory_limit: Option<u64>,
    pub venv: venv::Request,
    pub report_path: String,
}

impl Prepared {
    /// The stdin envelope: the recipe, the resolved secrets (the only way they reach the CLI), the report path.
    pub fn envelope(&self, secrets: &Secrets) -> String {
        let secrets: serde_json::Map<String, serde_json::Value> =
            secrets.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.expose().to_owned()))).collect();
        serde_json::json!({
            "__recipe_yaml__": self.recipe,
            "__secrets__": secrets,
            "__report_out_file__": self.report_path,
            "__debug_mode__": if self.debug { "true" } else { "false" },
        })
        .to_string()
    }
}

pub fn prepare(
    exec_id: &str,
    task_name: &str,
    args: &BTreeMap<String, String>,
    report_file: &Path,
) -> Result<Prepared, Invalid> {
    let test_connection = match task_name {
        RUN_INGEST => false,
        TEST_CONNECTION => true,
        other => return Err(Invalid::UnknownTask(other.to_owned())),
    };
    let recipe_text = args.get("recipe").ok_or(Invalid::NoRecipe)?;
    let mut recipe: serde_json::Value = serde_json::from_str(recipe_text).map_err(Invalid::RecipeNotJson)?;
    let Some(object) = recipe.as_object_mut() else { return Err(Invalid::RecipeNotObject) };
    if !test_connection {
        object.insert("run_id".into(), serde_json::Value::String(exec_id.to_owned()));
    }
    let plugin = object
        .get("source")
        .and_then(|s| s.get("type"))
        .and_then(serde_json::Value::as_str)
        .ok_or(Invalid::NoSourceType)?
        .to_owned();
    let debug = args.get("debug_mode").or_else(|| args.get("debugMode")).is_some_and(|v| v == "true");
    let mut env: BTreeMap<String, String> = match args.get("extra_env_vars").map(String::as_str) {
        None | Some("") => BTreeMap::new(),
        Some(text) => {
            let map: BTreeMap<String, serde_json::Value> =
                serde_json::from_str(text).map_err(Invalid::ExtraEnvNotObject)?;
            map.into_iter()
                .filter_map(|(k, v)| match v {
                    serde_json::Value::String(s) if s.is_empty() => None,
                    serde_json::Value::String(s) => Some((k, s)),
                    serde_json::Value::Null => None,
                    other => Some((k, other.to_string())),
                })
                .collect()
        }
    };
    let memory_limit = match env.get(MEMORY_LIMIT_VAR) {
        Some(text) => Some(text.trim().parse::<u64>().map_err(|_| Invalid::MemoryLimit(text.clone()))?),
        None => None,
    };
    let report_path = report_file.to_string_lossy().into_owned();
    let mut argv = Vec::new();
    if debug && !test_connection {
        argv.push("--debug".to_owned());
    }
    if test_connection {
        argv.extend(["ingest", "-c", "-", "--test-source-connection", "--report-to"].map(String::from));
    } else {
        argv.extend(["ingest", "run", "-c", "-", "--report-to"].map(String::from));
    }
    argv.push(report_path.clone());
    env.insert("DATAHUB_DEBUG".into(), if debug { "true" } else { "false" }.into());
    let venv = venv::Request::from_args(plugin, args)?;
    Ok(Prepared { recipe: recipe.to_string(), argv, env, test_connection, debug, memory_limit, venv, report_path })
}

#[cfg(test)]
mod tests {
    use crate::secrets::Secret;

    use super::*;

    fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const RECIPE: &str = r#"{"source":{"type":"file","config":{"path":"${INPUT_PATH}"}}}"#;

    #[test]
    fn the_envelope_carries_the_recipe_with_run_id_secrets_and_the_report_path() {
        let prepared = prepare(
            "abc",
            "RUN_INGEST",
            &args(&[("recipe", RECIPE), ("extra_env_vars", r#"{"A":"1","B":""}"#), ("version", "1.7.0.17")]),
            Path::new("/r/report.json"),
        )
        .unwrap();
        let secrets = [("INPUT_PATH".to_owned(), Secret::new("/data/in.json".into()))].into();
        let envelope: serde_json::Value = serde_json::from_str(&prepared.envelope(&secrets)).unwrap();
        let recipe: serde_json::Value = serde_json::from_str(envelope["__recipe_yaml__"].as_str().unwrap()).unwrap();
        assert_eq!(recipe["run_id"], "abc");
        assert_eq!(recipe["source"]["config"]["path"], "${INPUT_PATH}", "the recipe keeps its references");
        assert_eq!(envelope["__secrets__"]["INPUT_PATH"], "/data/in.json");
        assert_eq!(envelope["__report_out_file__"], "/r/report.json");
        assert_eq!(envelope["__debug_mode__"], "false");
        assert_eq!(prepared.argv, ["ingest", "run", "-c", "-", "--report-to", "/r/report.json"]);
        assert_eq!(prepared.env.get("A").map(String::as_str), Some("1"));
        assert!(!prepared.env.contains_key("B"), "empty values are dropped");
        assert_eq!(prepared.venv.plugin, "file");
        assert_eq!(prepared.venv.version.as_deref(), Some("1.7.0.17"));
        assert_eq!(prepared.memory_limit, None);
    }

    #[test]
    fn test_connection_debug_mode_memory_limit_and_pip_extras() {
        let prepared = prepare("abc", "TEST_CONNECTION", &args(&[("recipe", RECIPE)]), Path::new("/r")).unwrap();
        assert_eq!(prepared.argv, ["ingest", "-c", "-", "--test-source-connection", "--report-to", "/r"]);
        assert!(prepared.test_connection);
        let prepared = prepare(
            "abc",
            "RUN_INGEST",
            &args(&[
                ("recipe", RECIPE),
                ("debug_mode", "true"),
                ("extra_env_vars", r#"{"EXECUTOR_TASK_MEMORY_LIMIT":"128000000"}"#),
                ("extra_pip_requirements", r#"["pandas<3"]"#),
                ("extra_pip_plugins", ""),
            ]),
            Path::new("/r"),
        )
        .unwrap();
        assert_eq!(prepared.argv[0], "--debug");
        assert_eq!(prepared.env["DATAHUB_DEBUG"], "true");
        assert_eq!(prepared.memory_limit, Some(128_000_000));
        assert_eq!(prepared.venv.extra_requirements, ["pandas<3"]);
        assert!(prepared.venv.extra_plugins.is_empty());
    }

    #[test]
    fn bad_args_are_named() {
        let cases = [
            ("RUN_SOMETHING", args(&[("recipe", RECIPE)]), "Failed to find task with name=RUN_SOMETHING"),
            ("RUN_INGEST", args(&[]), "The task has no recipe argument"),
            ("RUN_INGEST", args(&[("recipe", "[]")]), "The recipe must be a JSON object"),
            ("RUN_INGEST", args(&[("recipe", "{}")]), "The recipe has no source.type"),
            (
                "RUN_INGEST",
                args(&[("recipe", RECIPE), ("extra_env_vars", "x")]),
                "extra_env_vars is not a JSON object: expected value at line 1 column 1",
            ),
            (
                "RUN_INGEST",
                args(&[("recipe", RECIPE), ("extra_env_vars", r#"{"EXECUTOR_TASK_MEMORY_LIMIT":"lots"}"#)]),
                "EXECUTOR_TASK_MEMORY_LIMIT must be a number of bytes, not \"lots\"",
            ),
            (
                "RUN_INGEST",
                args(&[("recipe", RECIPE), ("extra_pip_plugins", "kafka")]),
                "extra_pip_plugins is not a JSON list of strings: expected value at line 1 column 1",
            ),
        ];
        for (task, args, want) in cases {
            assert_eq!(
                prepare("abc", task, &args, Path::new("/r")).err().map(|e| e.to_string()).as_deref(),
                Some(want)
            );
        }
    }
}

#[cfg(test)]
mod properties {
    use std::collections::BTreeMap;
    use std::path::Path;

    use proptest::prelude::*;

    fn arg_value() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,60}",
            Just("{\"source\": {\"type\": \"file\", \"config\": {}}, \"sink\": {\"type\": \"blackhole\"}}".to_owned()),
            Just("{\"source\": 5}".to_owned()),
            Just("[]".to_owned()),
            Just("1.7.0.17".to_owned()),
            Just("{\"EXECUTOR_TASK_MEMORY_LIMIT\": \"x\"}".to_owned()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        /// Any args a request may carry (recipe, version, debug_mode, extra_env_vars, extra_pip_requirements, ...)
        /// become a run or a refusal with words, never a panic.
        #[test]
        fn any_args_are_prepared_or_refused(
            task in prop_oneof![Just("RUN_INGEST".to_owned()), Just("TEST_CONNECTION".to_owned()), "\\PC{0,12}"],
            args in prop::collection::btree_map(
                prop_oneof![Just("recipe".to_owned()), Just("version".to_owned()), Just("debug_mode".to_owned()),
                            Just("extra_env_vars".to_owned()), Just("extra_pip_requirements".to_owned()),
                            Just("extra_pip_plugins".to_owned()), "[a-z_]{1,10}"],
                arg_value(),
                0..6,
            ),
        ) {
            let args: BTreeMap<String, String> = args;
            if let Err(reason) = super::prepare("exec-1", &task, &args, Path::new("/tmp/report.json")) {
                prop_assert!(!reason.to_string().is_empty());
            }
        }
    }
}
