//! Output of listings (`ps`, `images`): `-q`, and `--format json|table|TEMPLATE` with a
//! Docker-like template (`{{.ID}}\t{{.Name}}`) over the same fields the JSON form has.

use serde_json::Value;

/// How a listing is printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    /// `{{.Field}}` placeholders (field names as in the JSON form, any case), `\t` and `\n`.
    Template(String),
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            t if t.contains("{{") => {
                check_template(t)?;
                Ok(Format::Template(t.to_string()))
            }
            other => Err(format!(
                "'{other}' is not a format: use json, table, or a template such as '{{{{.ID}}}}\\t{{{{.Name}}}}'"
            )),
        }
    }
}

fn check_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("template '{template}': '{{{{' without '}}}}'"))?;
        let inner = after[..end].trim();
        if inner != "json ." && !inner.starts_with('.') {
            return Err(format!(
                "template '{template}': '{{{{{inner}}}}}' is not a field — use {{{{.Field}}}} (the keys of --format json) or {{{{json .}}}}"
            ));
        }
        rest = &after[end + 2..];
    }
    Ok(())
}

/// Renders `row` (a JSON object) through `template`: `{{.Key}}` is the key's value (strings
/// bare, null empty, objects `k=v,k=v` like Docker's labels), `{{.Labels.K}}` one label,
/// `{{json .}}` the whole row. An unknown key renders as `<no value>` (Docker's wording).
pub fn render(template: &str, row: &Value) -> String {
    let template = template.replace("\\t", "\t").replace("\\n", "\n");
    let mut out = String::new();
    let mut rest = template.as_str();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = after[..end].trim();
        if inner == "json ." {
            out.push_str(&row.to_string());
        } else {
            let mut value = Some(row);
            for part in inner.trim_start_matches('.').split('.') {
                value = value.and_then(|v| field(v, part));
            }
            match value {
                Some(v) => out.push_str(&plain(v)),
                None => out.push_str("<no value>"),
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// `object[key]`, the key matched without regard to case or '_' (`.MaxAgeSecs`).
fn field<'a>(object: &'a Value, key: &str) -> Option<&'a Value> {
    let fold = |s: &str| s.replace('_', "").to_ascii_lowercase();
    let object = object.as_object()?;
    object.get(key).or_else(|| {
        object
            .iter()
            .find(|(k, _)| fold(k) == fold(key))
            .map(|(_, v)| v)
    })
}

fn plain(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", plain(v)))
            .collect::<Vec<_>>()
            .join(","),
        Value::Array(items) => items.iter().map(plain).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_fields_labels_and_json() {
        let row = serde_json::json!({"id": "abc", "name": null, "max_age_secs": 60,
            "labels": {"job": "42", "pr": "7"}});
        assert_eq!(
            render("{{.ID}}\\t{{.Name}}|{{.MaxAgeSecs}}", &row),
            "abc\t|60"
        );
        assert_eq!(
            render("{{.Labels.job}} {{.Labels}}", &row),
            "42 job=42,pr=7"
        );
        assert_eq!(render("{{.Nope}}", &row), "<no value>");
        assert_eq!(render("{{json .}}", &row), row.to_string());
    }

    #[test]
    fn formats_are_checked_when_parsed() {
        assert_eq!("json".parse::<Format>(), Ok(Format::Json));
        assert_eq!("table".parse::<Format>(), Ok(Format::Table));
        assert!("yaml"
            .parse::<Format>()
            .unwrap_err()
            .contains("not a format"));
        assert!("{{.ID".parse::<Format>().unwrap_err().contains("without"));
        assert!("{{ID}}"
            .parse::<Format>()
            .unwrap_err()
            .contains("not a field"));
    }
}
