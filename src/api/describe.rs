//! Field descriptions as `kubectl explain` prints them.
//!
//! Doc comments become CRD descriptions with their source line breaks, and `kubectl explain`
//! keeps every break: a sentence wrapped at column 100 in the source is printed broken after a
//! few words once kubectl wraps it again at its own width. Here each paragraph is joined into
//! one line (blank lines between paragraphs and list items stay), and a list field keeps one
//! description: kubectl prints the item type's text right after the field's, so "A feature
//! this one needs." would run on from "Features that must be Ready ...".
//!
//! Applied as a container transform on the spec and status types, so every way of getting the
//! schema (`PremiumFeature::crd()`, `premium-operator crd`, the offline checks) sees the same
//! text.

use schemars::Schema;
use serde_json::{Map, Value};

/// Rewrites every description under `schema` into paragraphs (see the module documentation).
pub fn paragraphs(schema: &mut Schema) {
    if let Some(node) = schema.as_object_mut() {
        rewrite(node);
    }
}

/// How Kubernetes' `Quantity` describes itself: a page of grammar meant for Go programmers,
/// printed under every resource request and limit.
const QUANTITY_PREFIX: &str = "Quantity is a fixed-point representation of a number.";
/// What a person writing `resources` needs to know instead.
const QUANTITY: &str = "A quantity: a number with an optional suffix, such as `250m` (a quarter CPU), `1` or `1.5` (CPUs), `128Mi` or `1Gi` (bytes).";

fn rewrite(node: &mut Map<String, Value>) {
    if let Some(Value::String(text)) = node.get_mut("description") {
        *text = if text.starts_with(QUANTITY_PREFIX) {
            QUANTITY.to_string()
        } else {
            as_paragraphs(text)
        };
    }
    let has_own = node
        .get("description")
        .and_then(Value::as_str)
        .is_some_and(|d| !d.is_empty());
    if has_own && let Some(Value::Object(items)) = node.get_mut("items") {
        items.remove("description");
    }
    for value in node.values_mut() {
        match value {
            Value::Object(child) => rewrite(child),
            Value::Array(children) => children
                .iter_mut()
                .filter_map(Value::as_object_mut)
                .for_each(rewrite),
            _ => {}
        }
    }
}

/// Whether a source line starts a list item, which keeps its own line.
fn starts_item(line: &str) -> bool {
    let line = line.trim_start();
    if line.starts_with("- ") || line.starts_with("* ") {
        return true;
    }
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && line[digits..].starts_with(". ")
}

/// `text` with the line breaks inside each paragraph replaced by spaces. Paragraphs (separated
/// by blank lines) are kept apart by one blank line; list items start a new line.
pub fn as_paragraphs(text: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut paragraph: Vec<String> = Vec::new();
    // Runs of spaces (two after a full stop, as in Kubernetes' own docs) become one.
    let lines = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "));
    for line in lines.chain(std::iter::once(String::new())) {
        let line = line.as_str();
        if line.is_empty() {
            if !paragraph.is_empty() {
                out.push(paragraph.join("\n"));
                paragraph.clear();
            }
            continue;
        }
        match paragraph.last_mut() {
            Some(last) if !starts_item(line) => {
                last.push(' ');
                last.push_str(line);
            }
            _ => paragraph.push(line.to_string()),
        }
    }
    out.join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn source_line_breaks_inside_a_paragraph_are_joined() {
        assert_eq!(
            as_paragraphs("Features that must be Ready\nbefore this one starts.\n"),
            "Features that must be Ready before this one starts."
        );
    }

    #[test]
    fn paragraphs_and_list_items_keep_their_breaks() {
        assert_eq!(
            as_paragraphs("One\ntwo.\n\n\nThree:\n- a\n  b\n- c\n1. d"),
            "One two.\n\nThree:\n- a b\n- c\n1. d"
        );
    }

    #[test]
    fn whitespace_only_text_becomes_empty() {
        assert_eq!(as_paragraphs(" \n \n"), "");
        assert_eq!(as_paragraphs("  padded  "), "padded");
        assert_eq!(as_paragraphs("Changed.  If not"), "Changed. If not");
    }

    #[test]
    fn a_list_field_keeps_only_its_own_description() {
        let mut schema = Schema::from(
            json!({"type": "object", "properties": {
                "dependsOn": {"description": "Features that must be\nReady.", "type": "array",
                              "items": {"description": "A feature this\none needs.", "type": "object"}},
                "bare": {"type": "array", "items": {"description": "Item\ntext."}}
            }})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        );
        paragraphs(&mut schema);
        let value = schema.as_value();
        assert_eq!(
            value.pointer("/properties/dependsOn"),
            Some(
                &json!({"description": "Features that must be Ready.", "type": "array",
                         "items": {"type": "object"}})
            )
        );
        // Without a description of its own the list keeps its item type's, joined.
        assert_eq!(
            value.pointer("/properties/bare/items/description"),
            Some(&json!("Item text."))
        );
    }
}
