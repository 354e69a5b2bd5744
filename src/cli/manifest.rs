//! Reading manifests for `check` and `graph`: files and folders, multi-document YAML, and
//! the kind of each document.
//!
//! Reading never fails as a whole: every problem becomes a [`Problem`] naming the file (and
//! document), so one bad file cannot hide the findings in the others.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};

use crate::api::{GROUP, VERSION};

/// Files larger than this are refused rather than read into memory: no manifest is that big,
/// and a mistaken path such as a disk image or `/dev/zero` must not exhaust memory.
pub const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;

/// The manifests' kinds this operator serves.
pub const FEATURE_KIND: &str = "PremiumFeature";
pub const POLICY_KIND: &str = "PremiumPolicy";
const OUR_KINDS: [&str; 2] = [FEATURE_KIND, POLICY_KIND];

/// One input file: its name as the user wrote it (or as found under a folder they named) and its
/// text, or why it could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub path: String,
    pub text: Result<String, String>,
}

impl Input {
    pub fn new(path: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            text: Ok(text.into()),
        }
    }
}

/// A file that, placed in a folder, keeps the folder out of the check of a parent folder (the
/// folder is still checked when named itself). `examples/invalid/` has one, so that
/// `check examples/` checks the working examples only.
pub const SKIP_MARKER: &str = ".premium-operator-skip";

/// Reads every path: a file as is (whatever its extension), a folder recursively (its `*.yaml`
/// and `*.yml` files, sorted, skipping hidden entries such as `.git` or `.github`, and
/// subfolders holding a [`SKIP_MARKER`] file). A file named twice is read once. Problems with a path (missing, unreadable, an empty folder) come back as
/// an [`Input`] whose text is the error, so they are reported in order with the rest.
pub fn read_inputs(paths: &[PathBuf]) -> Vec<Input> {
    let mut inputs = Vec::new();
    let mut seen = BTreeSet::new();
    for path in paths {
        let display = path.display().to_string();
        let metadata = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) => {
                inputs.push(Input {
                    path: display,
                    text: Err(format!("cannot read: {}", io_reason(&e))),
                });
                continue;
            }
        };
        if metadata.is_dir() {
            let mut files = Vec::new();
            let mut visited = BTreeSet::new();
            if let Err(e) = yaml_files_under(path, &mut files, &mut visited) {
                inputs.push(Input {
                    path: display,
                    text: Err(e),
                });
                continue;
            }
            if files.is_empty() {
                inputs.push(Input {
                    path: display,
                    text: Err(
                        "no .yaml or .yml files in this folder (hidden files and folders are skipped); name the manifests *.yaml or pass the files themselves".to_string(),
                    ),
                });
                continue;
            }
            for file in files {
                push_file(&file, &mut inputs, &mut seen);
            }
        } else {
            push_file(path, &mut inputs, &mut seen);
        }
    }
    inputs
}

fn push_file(path: &Path, inputs: &mut Vec<Input>, seen: &mut BTreeSet<PathBuf>) {
    let identity = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if !seen.insert(identity) {
        return;
    }
    inputs.push(Input {
        path: path.display().to_string(),
        text: read_text(path),
    });
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or folder".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    }
}

/// The text of a manifest file, or a one-line reason it cannot be one.
fn read_text(path: &Path) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {}", io_reason(&e)))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {}", io_reason(&e)))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "larger than {} MiB; this is not a manifest file",
            MAX_FILE_BYTES / (1024 * 1024)
        ));
    }
    text_of(bytes)
}

/// Decodes file contents as UTF-8 text, refusing binary data with a reason a person understands.
pub fn text_of(bytes: Vec<u8>) -> Result<String, String> {
    if bytes.contains(&0) {
        return Err(
            "binary data (it contains NUL bytes), not YAML; pass only manifest files".to_string(),
        );
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 text (invalid byte at offset {}), not YAML; save the manifest as UTF-8",
            e.utf8_error().valid_up_to()
        )
    })
}

/// Collects `*.yaml`/`*.yml` files under `dir`, sorted by path, skipping hidden entries.
/// `visited` holds canonical folder paths so a symlink loop is walked once.
fn yaml_files_under(
    dir: &Path,
    files: &mut Vec<PathBuf>,
    visited: &mut BTreeSet<PathBuf>,
) -> Result<(), String> {
    let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    if !visited.insert(canonical) {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read: {}", io_reason(&e)))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        // `metadata` follows symlinks, so a linked folder or file counts as what it points to.
        let Ok(metadata) = std::fs::metadata(&path) else {
            // A dangling symlink: nothing to check.
            continue;
        };
        if metadata.is_dir() {
            // A folder of deliberately broken examples opts out of checks of its parents.
            if !path.join(SKIP_MARKER).exists() {
                yaml_files_under(&path, files, visited)?;
            }
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e == "yaml" || e == "yml")
        {
            files.push(path);
        }
    }
    Ok(())
}

/// One YAML document of a file, before parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDocument<'a> {
    /// 1-based number among the file's non-empty documents.
    pub number: usize,
    /// 1-based line of the file on which the document's text starts.
    pub first_line: usize,
    pub text: &'a str,
}

/// Splits a multi-document YAML stream at `---` lines, as `kubectl` does. A separator line may
/// carry a comment or the start of the document (`--- {a: 1}`); it stays with the document that
/// follows. Documents with nothing but blank lines and comments are dropped; the rest are
/// numbered from 1.
pub fn split_documents(text: &str) -> Vec<RawDocument<'_>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut chunks: Vec<(usize, usize, usize)> = Vec::new(); // (first line, start byte, end byte)
    let mut start = 0;
    let mut first_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if i > 0 && is_separator(line) {
            chunks.push((first_line, start, offset));
            start = offset;
            first_line = i + 1;
        }
        offset += line.len();
    }
    chunks.push((first_line, start, text.len()));

    let mut documents = Vec::new();
    for (first_line, from, to) in chunks {
        let chunk = &text[from..to];
        if chunk.lines().all(is_blank_line) {
            continue;
        }
        documents.push(RawDocument {
            number: documents.len() + 1,
            first_line,
            text: chunk,
        });
    }
    documents
}

/// A `---` line: the marker alone, with a comment, or followed by a space and content.
fn is_separator(line: &str) -> bool {
    let line = line.trim_end_matches(['\n', '\r']);
    match line.strip_prefix("---") {
        Some(rest) => rest.is_empty() || rest.starts_with([' ', '\t']),
        None => false,
    }
}

/// A line without content: blank, a comment, a bare separator or a document end marker.
fn is_blank_line(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#') || t == "---" || t == "..." || {
        // `--- # comment`
        t.strip_prefix("---")
            .is_some_and(|rest| rest.trim_start().starts_with('#'))
    }
}

static LOCATION: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"line (\d+) column (\d+)").ok());

/// Parses one document into JSON, the form the API server validates. Line numbers in errors are
/// the file's, not the document's.
///
/// Beyond YAML syntax this refuses what `kubectl` would also refuse or silently change: duplicate
/// keys, tags (`!foo`), keys that are lists or mappings, and numbers that are not finite.
pub fn parse_document(doc: &RawDocument<'_>) -> Result<Value, String> {
    let yaml: serde_yaml::Value = serde_yaml::from_str(doc.text).map_err(|e| {
        let message = e.to_string();
        let offset = doc.first_line.saturating_sub(1);
        match LOCATION.as_ref() {
            Some(re) => re
                .replace_all(&message, |c: &regex::Captures<'_>| {
                    let line = c[1].parse::<usize>().unwrap_or(0).saturating_add(offset);
                    format!("line {line} column {}", &c[2])
                })
                .into_owned(),
            None => message,
        }
    })?;
    yaml_to_json(&yaml, "")
}

/// Converts parsed YAML to JSON the way `sigs.k8s.io/yaml` does: scalar keys become strings.
pub fn yaml_to_json(yaml: &serde_yaml::Value, path: &str) -> Result<Value, String> {
    use serde_yaml::Value as Y;
    Ok(match yaml {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(*b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                match serde_json::Number::from_f64(f) {
                    Some(n) => Value::Number(n),
                    None => {
                        return Err(format!(
                            "{}: {n} is not a finite number; write a plain number",
                            display_path(path)
                        ));
                    }
                }
            }
        }
        Y::String(s) => Value::String(s.clone()),
        Y::Sequence(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| yaml_to_json(item, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(mapping) => {
            let mut map = Map::new();
            for (key, value) in mapping {
                let key = match key {
                    Y::String(s) => s.clone(),
                    Y::Bool(b) => b.to_string(),
                    Y::Number(n) => n.to_string(),
                    Y::Null => "null".to_string(),
                    _ => {
                        return Err(format!(
                            "{}: a key is a list or mapping; keys must be plain names",
                            display_path(path)
                        ));
                    }
                };
                let child = join(path, &key);
                map.insert(key, yaml_to_json(value, &child)?);
            }
            Value::Object(map)
        }
        Y::Tagged(tagged) => {
            return Err(format!(
                "{}: YAML tags such as {} are not supported in Kubernetes manifests; remove the tag",
                display_path(path),
                tagged.tag
            ));
        }
    })
}

fn display_path(path: &str) -> &str {
    if path.is_empty() {
        "the document"
    } else {
        path
    }
}

/// `parent.child`, or `child` at the top.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// What a document is, by its `apiVersion` and `kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocKind {
    Feature,
    Policy,
    /// A kind of another API, not checked (`Namespace`, `ConfigMap`, a CRD, …).
    Other {
        api_version: String,
        kind: String,
    },
    /// `kind: List` (as `kubectl get -o yaml` writes): its `items` are documents of their own.
    List,
}

/// Why a document is not a Kubernetes object this tool can place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindError(pub String);

impl fmt::Display for KindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Names a JSON value's type for a person reading YAML.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Classifies a document by `apiVersion` and `kind`.
pub fn classify(doc: &Value) -> Result<DocKind, KindError> {
    let Value::Object(map) = doc else {
        return Err(KindError(format!(
            "expected a Kubernetes object (a mapping with apiVersion and kind), got {}",
            type_name(doc)
        )));
    };
    let api_version = map.get("apiVersion");
    let kind = map.get("kind");
    let (api_version, kind) = match (api_version, kind) {
        (Some(Value::String(a)), Some(Value::String(k))) if !a.is_empty() && !k.is_empty() => {
            (a.as_str(), k.as_str())
        }
        (None | Some(Value::Null), None | Some(Value::Null)) => {
            return Err(KindError(
                "not a Kubernetes object: apiVersion and kind are missing; every manifest needs both, for example apiVersion: premium.dev/v1alpha1 and kind: PremiumFeature".to_string(),
            ));
        }
        (a, k) => {
            let bad = |name: &str, v: Option<&Value>| match v {
                Some(Value::String(s)) if !s.is_empty() => None,
                Some(Value::String(_)) => Some(format!("{name} is empty")),
                None | Some(Value::Null) => Some(format!("{name} is missing")),
                Some(other) => Some(format!("{name} must be a string, got {}", type_name(other))),
            };
            let problems: Vec<String> = [bad("apiVersion", a), bad("kind", k)]
                .into_iter()
                .flatten()
                .collect();
            return Err(KindError(format!(
                "not a Kubernetes object: {}; every manifest needs both, for example apiVersion: premium.dev/v1alpha1 and kind: PremiumFeature",
                problems.join(", ")
            )));
        }
    };
    let (group, version) = match api_version.rsplit_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let ours = format!("{GROUP}/{VERSION}");
    if group == GROUP {
        let known = OUR_KINDS.iter().find(|k| **k == kind);
        return match known {
            Some(_) if version == VERSION => Ok(if kind == FEATURE_KIND {
                DocKind::Feature
            } else {
                DocKind::Policy
            }),
            Some(_) => Err(KindError(format!(
                "apiVersion {api_version} is not served; {kind} is served as apiVersion {ours}"
            ))),
            None => {
                let hint = OUR_KINDS
                    .iter()
                    .find(|k| k.eq_ignore_ascii_case(kind))
                    .map(|k| format!(" (did you mean {k}?)"))
                    .unwrap_or_default();
                Err(KindError(format!(
                    "unknown kind {kind} in group {GROUP}{hint}; the kinds are {}",
                    OUR_KINDS.join(" and ")
                )))
            }
        };
    }
    if OUR_KINDS.contains(&kind) {
        return Err(KindError(format!(
            "{kind} is served as apiVersion {ours}, not {api_version}"
        )));
    }
    if kind == "List" && map.get("items").is_some_and(Value::is_array) {
        return Ok(DocKind::List);
    }
    Ok(DocKind::Other {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
    })
}

/// How bad a finding is: errors fail `check`, warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// Where in the input a finding or object comes from: file, document and, inside a `List`,
/// item. Ordering follows the input.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    /// Position of the file among the inputs.
    pub file_index: usize,
    pub file: String,
    /// 1-based document number; 0 for the file as a whole.
    pub document: usize,
    /// 1-based item of a `List` document.
    pub item: Option<usize>,
}

impl Location {
    /// `document 3`, or `document 3 item 2` inside a List.
    pub fn document_label(&self) -> String {
        match self.item {
            Some(item) => format!("document {} item {item}", self.document),
            None => format!("document {}", self.document),
        }
    }
}

/// One line of output: `FILE: SUBJECT: message`, or `FILE: SUBJECT: warning: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub location: Location,
    /// `Kind/namespace/name`, `document N`, or nothing when about the file as a whole.
    pub subject: Option<String>,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.location.file)?;
        if let Some(subject) = &self.subject {
            write!(f, "{subject}: ")?;
        }
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        // One finding, one line: a message never spans lines in CI logs.
        f.write_str(&self.message.replace(['\n', '\r'], " "))
    }
}

/// A Kubernetes object read from the input, not yet validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub location: Location,
    pub kind: DocKind,
    pub value: Value,
}

impl Object {
    /// `metadata.name` when it is a non-empty string.
    pub fn name(&self) -> Option<&str> {
        self.value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
    }

    /// `metadata.namespace` as written, when it is a string.
    pub fn namespace_as_written(&self) -> Option<&str> {
        self.value
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
    }

    /// The namespace the object lands in: as written, else `default` (as `kubectl apply` does
    /// without `-n`).
    pub fn namespace(&self) -> &str {
        self.namespace_as_written().unwrap_or("default")
    }

    pub fn kind_name(&self) -> &str {
        match &self.kind {
            DocKind::Feature => FEATURE_KIND,
            DocKind::Policy => POLICY_KIND,
            DocKind::Other { kind, .. } => kind,
            DocKind::List => "List",
        }
    }

    /// `Kind/namespace/name` for our kinds, or the document label when the name is unusable.
    pub fn subject(&self) -> String {
        match self.name() {
            Some(name) => format!("{}/{}/{name}", self.kind_name(), self.namespace()),
            None => self.location.document_label(),
        }
    }

    /// String labels of the object; values of other types are left out.
    pub fn labels(&self) -> std::collections::BTreeMap<String, String> {
        self.value
            .get("metadata")
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object)
            .map(|labels| {
                labels
                    .iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The feature's `dependsOn`, read leniently: entries without a string `name` are skipped,
    /// so a graph can be drawn even from manifests with schema errors.
    pub fn dependencies(&self) -> Vec<crate::core::graph::DependencyEdge> {
        let own = self.namespace();
        let Some(deps) = self
            .value
            .pointer("/spec/dependsOn")
            .and_then(Value::as_array)
        else {
            return Vec::new();
        };
        deps.iter()
            .filter_map(|d| {
                let dep = crate::api::Dependency {
                    name: d.get("name")?.as_str()?.to_string(),
                    // An empty namespace is a schema error; drawn, it reads as the default.
                    namespace: d
                        .get("namespace")
                        .and_then(Value::as_str)
                        .filter(|n| !n.is_empty())
                        .map(String::from),
                    optional: d.get("optional").and_then(Value::as_bool) == Some(true),
                };
                Some(crate::core::graph::DependencyEdge {
                    target: crate::core::plan::dependency_key(own, &dep),
                    optional: dep.optional,
                })
            })
            .collect()
    }
}

/// Everything read from the inputs: the objects, and the problems that kept documents from
/// becoming objects (unreadable files, YAML errors, documents that are not Kubernetes objects,
/// unknown kinds of our group).
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub objects: Vec<Object>,
    pub diagnostics: Vec<Diagnostic>,
    pub files: usize,
}

/// Splits, parses and classifies every input. Pure: the inputs are already read.
pub fn load(inputs: &[Input]) -> Loaded {
    let mut loaded = Loaded {
        files: inputs.len(),
        ..Loaded::default()
    };
    for (file_index, input) in inputs.iter().enumerate() {
        let file_location = Location {
            file_index,
            file: input.path.clone(),
            document: 0,
            item: None,
        };
        match &input.text {
            Ok(text) => {
                for raw in split_documents(text) {
                    let location = Location {
                        document: raw.number,
                        ..file_location.clone()
                    };
                    loaded.load_document(&raw, location);
                }
            }
            Err(message) => loaded.diagnostics.push(Diagnostic {
                location: file_location,
                subject: None,
                severity: Severity::Error,
                message: message.clone(),
            }),
        }
    }
    loaded
}

impl Loaded {
    /// A document that does not become an object, and why.
    fn problem(&mut self, location: Location, message: String) {
        self.diagnostics.push(Diagnostic {
            subject: Some(location.document_label()),
            location,
            severity: Severity::Error,
            message,
        });
    }

    fn load_document(&mut self, raw: &RawDocument<'_>, location: Location) {
        let value = match parse_document(raw) {
            Ok(Value::Null) => return,
            Ok(value) => value,
            Err(message) => return self.problem(location, format!("not valid YAML: {message}")),
        };
        match classify(&value) {
            Ok(DocKind::List) => self.load_list(&value, location),
            Ok(kind) => self.objects.push(Object {
                location,
                kind,
                value,
            }),
            Err(e) => self.problem(location, e.0),
        }
    }

    /// The items of a `kind: List`, each an object of its own.
    fn load_list(&mut self, list: &Value, location: Location) {
        let Some(Value::Array(items)) = list.get("items") else {
            return;
        };
        for (i, item) in items.iter().enumerate() {
            let location = Location {
                item: Some(i + 1),
                ..location.clone()
            };
            match classify(item) {
                Ok(DocKind::List) => self.problem(
                    location,
                    "a List inside a List is not supported; flatten the items".into(),
                ),
                Ok(kind) => self.objects.push(Object {
                    location,
                    kind,
                    value: item.clone(),
                }),
                Err(e) => self.problem(location, e.0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn texts(docs: &[RawDocument<'_>]) -> Vec<String> {
        docs.iter().map(|d| d.text.trim().to_string()).collect()
    }

    #[test]
    fn splits_at_separator_lines() {
        let docs = split_documents("a: 1\n---\nb: 2\n--- # two\nc: 3\n");
        assert_eq!(texts(&docs), ["a: 1", "---\nb: 2", "--- # two\nc: 3"]);
        assert_eq!(
            docs.iter()
                .map(|d| (d.number, d.first_line))
                .collect::<Vec<_>>(),
            [(1, 1), (2, 2), (3, 4)]
        );
    }

    #[test]
    fn drops_empty_documents_and_numbers_the_rest() {
        let docs = split_documents("---\n# only a comment\n---\n\n---\na: 1\n---\n");
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].number, 1);
        assert_eq!(docs[0].first_line, 5);
        assert!(split_documents("").is_empty());
        assert!(split_documents("\n\n# nothing\n").is_empty());
    }

    #[test]
    fn keeps_content_on_the_separator_line() {
        let docs = split_documents("--- {a: 1}\n--- {b: 2}\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(parse_document(&docs[1]).unwrap(), json!({"b": 2}));
    }

    #[test]
    fn does_not_split_at_dashes_inside_text() {
        let docs = split_documents("a: |\n  ---\n  text\nb: ----x\n----\n");
        assert_eq!(docs.len(), 1);
    }

    #[test]
    fn handles_crlf_and_a_byte_order_mark() {
        let docs = split_documents("\u{feff}a: 1\r\n---\r\nb: 2\r\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(parse_document(&docs[0]).unwrap(), json!({"a": 1}));
        assert_eq!(parse_document(&docs[1]).unwrap(), json!({"b": 2}));
    }

    #[test]
    fn syntax_errors_carry_the_file_line() {
        let text = "a: 1\n---\nb: 2\nc: [\n";
        let docs = split_documents(text);
        let err = parse_document(&docs[1]).unwrap_err();
        assert!(err.contains("line 5"), "{err}");
    }

    #[test]
    fn refuses_duplicate_keys_tags_and_complex_keys() {
        for text in ["a: 1\na: 2\n", "a: !foo 1\n", "? [1, 2]\n: x\n"] {
            let docs = split_documents(text);
            assert!(parse_document(&docs[0]).is_err(), "{text:?} should fail");
        }
    }

    #[test]
    fn converts_scalar_keys_to_strings() {
        let docs = split_documents("1: a\ntrue: b\n");
        assert_eq!(
            parse_document(&docs[0]).unwrap(),
            json!({"1": "a", "true": "b"})
        );
    }

    #[test]
    fn refuses_non_finite_numbers() {
        let docs = split_documents("a: .inf\n");
        assert!(parse_document(&docs[0]).unwrap_err().contains("finite"));
    }

    #[test]
    fn binary_data_is_refused() {
        assert!(text_of(vec![0, 1, 2]).unwrap_err().contains("binary"));
        assert!(
            text_of(vec![0xff, 0xfe, b'a'])
                .unwrap_err()
                .contains("UTF-8")
        );
        assert_eq!(text_of(b"a: 1".to_vec()).unwrap(), "a: 1");
    }

    #[test]
    fn classifies_kinds() {
        let doc = |a: &str, k: &str| json!({"apiVersion": a, "kind": k});
        assert_eq!(
            classify(&doc("premium.dev/v1alpha1", "PremiumFeature")),
            Ok(DocKind::Feature)
        );
        assert_eq!(
            classify(&doc("premium.dev/v1alpha1", "PremiumPolicy")),
            Ok(DocKind::Policy)
        );
        assert_eq!(
            classify(&doc("v1", "Namespace")),
            Ok(DocKind::Other {
                api_version: "v1".into(),
                kind: "Namespace".into()
            })
        );
        assert!(
            classify(&doc("premium.dev/v1", "PremiumFeature"))
                .unwrap_err()
                .0
                .contains("not served")
        );
        assert!(
            classify(&doc("premium.dev/v1alpha1", "Premiumfeature"))
                .unwrap_err()
                .0
                .contains("did you mean PremiumFeature")
        );
        assert!(
            classify(&doc("v1", "PremiumPolicy"))
                .unwrap_err()
                .0
                .contains("premium.dev/v1alpha1")
        );
        assert!(
            classify(&json!({"a": 1}))
                .unwrap_err()
                .0
                .contains("apiVersion and kind are missing")
        );
        assert!(
            classify(&json!({"apiVersion": 1, "kind": "X"}))
                .unwrap_err()
                .0
                .contains("apiVersion must be a string")
        );
        assert!(classify(&json!([1])).unwrap_err().0.contains("got a list"));
        assert_eq!(
            classify(&json!({"apiVersion": "v1", "kind": "List", "items": []})),
            Ok(DocKind::List)
        );
    }

    #[test]
    fn reads_folders_recursively_sorted_skipping_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("b/c")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        for f in [
            "b/c/z.yml",
            "a.yaml",
            "b/x.yaml",
            "notes.txt",
            ".git/h.yaml",
        ] {
            std::fs::write(root.join(f), "a: 1\n").unwrap();
        }
        let inputs = read_inputs(&[root.to_path_buf(), root.join("a.yaml")]);
        let names: Vec<String> = inputs
            .iter()
            .map(|i| {
                Path::new(&i.path)
                    .strip_prefix(root)
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(names, ["a.yaml", "b/c/z.yml", "b/x.yaml"]);

        std::fs::write(root.join("b").join(SKIP_MARKER), "").unwrap();
        let inputs = read_inputs(&[root.to_path_buf()]);
        assert_eq!(inputs.len(), 1);
        // Named itself, a skipped folder is checked.
        let inputs = read_inputs(&[root.join("b")]);
        assert_eq!(inputs.len(), 2);
    }

    #[test]
    fn reports_missing_paths_and_empty_folders() {
        let dir = tempfile::tempdir().unwrap();
        let inputs = read_inputs(&[dir.path().join("nope.yaml"), dir.path().to_path_buf()]);
        assert_eq!(inputs.len(), 2);
        assert!(
            inputs[0]
                .text
                .as_ref()
                .unwrap_err()
                .contains("no such file")
        );
        assert!(inputs[1].text.as_ref().unwrap_err().contains("no .yaml"));
    }
}
