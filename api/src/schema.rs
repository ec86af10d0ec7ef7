//! JSON schemas that derive cannot express: Kubernetes CRD schemas must be structural
//! (no recursion, no `$ref`), and quantities are ints or strings.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use crate::quantity::Quantity;

/// A nested condition: an object whose fields are kept as written (the schema cannot
/// recurse); the controller validates it.
pub fn nested(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

/// A list of nested conditions.
pub fn nested_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}})
}

impl JsonSchema for Quantity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Quantity".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"x-kubernetes-int-or-string": true})
    }
}
