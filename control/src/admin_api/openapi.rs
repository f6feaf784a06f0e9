//! The admin API described as an OpenAPI 3.0.3 document, served at `/api/v1/openapi.json`.
//!
//! The invariant: the document says nothing the code does not do. A fuzzer checks real
//! responses against it and sends bodies built from it, so a response schema lists only fields
//! that are always there (an `Option` without `skip_serializing_if` is `nullable`), and a
//! request schema holds exactly the checks its handler makes that a schema can express. Where
//! the code's rule cannot be written down (a region that must be configured, a confirm that
//! must repeat the path's id), the schema is looser than the handler; it is stricter only for
//! inputs no client means (`" sync "` padded, a `+001_x.sql` file name). The test below reads
//! the router's source, so a route added there without a description here fails.

use std::sync::OnceLock;

use hemvist_proto::ErrorKind;
use serde_json::{json, Map, Value};

/// The document, built on first use.
pub fn served() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(document)
}

pub fn document() -> Value {
    let mut paths = Map::new();
    let mut section = |tag, describe: fn(&mut Section<'_>)| {
        describe(&mut Section {
            paths: &mut paths,
            tag,
        })
    };
    section("orgs", orgs);
    section("nodes", nodes);
    section("operations", operations);
    section("audit", audit);
    section("migrations", migrations);
    section("branches", branches);
    section("tokens", tokens);
    section("system", system);
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "hemvist control plane admin API",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "servers": [{"url": "/"}],
        "security": [{"admin": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}},
            "responses": error_components(),
            "schemas": schemas(),
        },
    })
}

// ---- The builder ----------------------------------------------------------------------------

/// The paths of one resource, each operation tagged with it.
struct Section<'a> {
    paths: &'a mut Map<String, Value>,
    tag: &'static str,
}

impl Section<'_> {
    fn get(&mut self, path: &str, op: Op) {
        self.add("get", path, op);
    }

    fn post(&mut self, path: &str, op: Op) {
        self.add("post", path, op);
    }

    fn delete(&mut self, path: &str, op: Op) {
        self.add("delete", path, op);
    }

    fn add(&mut self, method: &str, path: &str, op: Op) {
        let item = self
            .paths
            .entry(path.to_string())
            .or_insert_with(|| json!({}));
        item[method] = op.build(self.tag);
    }
}

/// One operation (a method on a path).
struct Op {
    id: &'static str,
    summary: &'static str,
    parameters: Vec<Value>,
    body: Option<Value>,
    responses: Map<String, Value>,
    public: bool,
}

/// What every route behind the token can answer: no or a wrong token, and the control store
/// failing (busy is 503, anything else 500).
const BEHIND_TOKEN: [u16; 3] = [401, 500, 503];

impl Op {
    fn new(id: &'static str, summary: &'static str) -> Self {
        Op::public(id, summary).behind_token()
    }

    /// Reachable without the admin token.
    fn public(id: &'static str, summary: &'static str) -> Self {
        Op {
            id,
            summary,
            parameters: Vec::new(),
            body: None,
            responses: Map::new(),
            public: true,
        }
    }

    fn behind_token(mut self) -> Self {
        self.public = false;
        self.errors(&BEHIND_TOKEN)
    }

    fn path(mut self, name: &str, schema: Value) -> Self {
        self.parameters.push(json!({
            "name": name, "in": "path", "required": true, "schema": schema,
        }));
        self
    }

    fn query(mut self, name: &str, required: bool, schema: Value) -> Self {
        self.parameters.push(json!({
            "name": name, "in": "query", "required": required, "schema": schema,
        }));
        self
    }

    /// A JSON body the handler needs (an empty one is refused).
    fn body(mut self, schema: Value) -> Self {
        self.body = Some(json!({
            "required": true,
            "content": {"application/json": {"schema": schema}},
        }));
        self
    }

    /// A JSON body that may be left out altogether.
    fn optional_body(mut self, schema: Value) -> Self {
        self.body = Some(json!({
            "required": false,
            "content": {"application/json": {"schema": schema}},
        }));
        self
    }

    /// A JSON answer.
    fn answers(self, status: u16, description: &str, schema: Value) -> Self {
        self.answers_as(status, description, &[("application/json", schema)])
    }

    fn answers_as(mut self, status: u16, description: &str, media: &[(&str, Value)]) -> Self {
        let content: Map<String, Value> = media
            .iter()
            .map(|(m, s)| (m.to_string(), json!({"schema": s})))
            .collect();
        self.responses.insert(
            status.to_string(),
            json!({"description": description, "content": content}),
        );
        self
    }

    /// Error statuses, each with the shared error body.
    fn errors(mut self, statuses: &[u16]) -> Self {
        for s in statuses {
            self.responses.insert(
                s.to_string(),
                json!({"$ref": format!("#/components/responses/{}", error_name(*s))}),
            );
        }
        self
    }

    fn build(self, tag: &str) -> Value {
        let mut op = json!({
            "operationId": self.id,
            "summary": self.summary,
            "tags": [tag],
            "responses": self.responses,
        });
        if !self.parameters.is_empty() {
            op["parameters"] = Value::Array(self.parameters);
        }
        if let Some(body) = self.body {
            op["requestBody"] = body;
        }
        if self.public {
            op["security"] = json!([]);
        }
        op
    }
}

/// The errors the API answers with, by status. 409 stands for `conflict`, `fenced` and
/// `cancelled` alike (see `ErrorKind::http_status`).
const ERRORS: [(u16, &str, &str); 8] = [
    (
        400,
        "BadRequest",
        "The request is not valid (nothing was done).",
    ),
    (
        401,
        "Unauthenticated",
        "No admin token, or not a valid one.",
    ),
    (
        404,
        "NotFound",
        "No such org, node, operation, branch or token.",
    ),
    (
        409,
        "Conflict",
        "It conflicts with the state it found (nothing was done).",
    ),
    (
        413,
        "TooLarge",
        "The body, or a file in it, is larger than allowed.",
    ),
    (
        422,
        "Residency",
        "The org's residency policy forbids it (nothing was done).",
    ),
    (
        500,
        "Internal",
        "A fault of the control plane; retrying may help.",
    ),
    (
        503,
        "Unavailable",
        "Something needed is down or busy; retrying later can help.",
    ),
];

fn error_name(status: u16) -> &'static str {
    ERRORS
        .iter()
        .find(|(s, _, _)| *s == status)
        .map(|(_, name, _)| *name)
        .unwrap_or_else(|| panic!("no error response for status {status}"))
}

fn error_components() -> Value {
    let mut out = Map::new();
    for (_, name, description) in ERRORS {
        out.insert(
            name.to_string(),
            json!({
                "description": description,
                "content": {"application/json": {"schema": schema_ref("Error")}},
            }),
        );
    }
    Value::Object(out)
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn string() -> Value {
    json!({"type": "string"})
}

fn boolean() -> Value {
    json!({"type": "boolean"})
}

/// An integer in a response (no bounds: a response is not checked for them).
fn integer() -> Value {
    json!({"type": "integer"})
}

fn integers() -> Value {
    array(integer())
}

fn strings() -> Value {
    array(string())
}

/// An integer a request may carry: the bounds are those the handler refuses outside of (at
/// least its Rust type's, which serde refuses with 400).
fn int_in(min: i128, max: i128) -> Value {
    json!({"type": "integer", "minimum": min, "maximum": max})
}

const U32: (i128, i128) = (0, u32::MAX as i128);
const U64: (i128, i128) = (0, u64::MAX as i128);
const I64: (i128, i128) = (i64::MIN as i128, i64::MAX as i128);

fn array(items: Value) -> Value {
    json!({"type": "array", "items": items})
}

/// Anything JSON (a field the domain fills with free-form JSON).
fn any() -> Value {
    json!({})
}

fn nullable(mut schema: Value) -> Value {
    schema["nullable"] = json!(true);
    schema
}

/// A response object whose every property is always present.
fn record(properties: Value) -> Value {
    let required: Vec<&String> = properties
        .as_object()
        .map(|p| p.keys().collect())
        .unwrap_or_default();
    json!({"type": "object", "required": required, "properties": properties})
}

/// A request body of a struct with `deny_unknown_fields`.
fn closed(required: &[&str], properties: Value) -> Value {
    let mut schema = json!({
        "type": "object",
        "properties": properties,
        "additionalProperties": false,
    });
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    schema
}

/// A string of one of `values`; `null` too for an `Option` (OpenAPI 3.0 needs it listed).
fn one_of_strings(values: &[&str], can_be_null: bool) -> Value {
    let mut listed: Vec<Value> = values.iter().map(|v| json!(v)).collect();
    if can_be_null {
        listed.push(Value::Null);
        return json!({"type": "string", "nullable": true, "enum": listed});
    }
    json!({"type": "string", "enum": listed})
}

// ---- Ids, as `hemvist_proto::ids` checks them -------------------------------------------------
//
// The patterns are exactly the ids' rules (ECMA-262 semantics: `$` is the end of the string).

/// What Rust's `str::trim` takes off (the Unicode `White_Space` property).
const WHITE_SPACE: &str =
    r"\u0009-\u000d\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";
/// What `char::is_control` is (the `Cc` category).
const CONTROL: &str = r"\u0000-\u001f\u007f-\u009f";
/// The bidirectional overrides an org's name may not hold.
const BIDI: &str = r"\u202a-\u202e\u2066-\u2069";
/// A region, node or token name, or a part of an org id: `[a-z0-9]`, single `-` inside.
const SLUG: &str = "[a-z0-9]+(?:-[a-z0-9]+)*";

/// A region, node or token name (`check_slug`).
fn slug() -> Value {
    json!({"type": "string", "pattern": format!("^{SLUG}$"), "maxLength": 63})
}

/// An org id or a branch's `PARENT--NAME` (`check_org`).
fn org_id() -> Value {
    json!({
        "type": "string",
        "pattern": format!("^{SLUG}(?:--{SLUG})?$"),
        "maxLength": 63,
    })
}

/// An operation id as `operation_id` takes it.
fn operation_id() -> Value {
    json!({"type": "string", "pattern": "^[A-Za-z0-9-]+$", "maxLength": 128})
}

// ---- Orgs -----------------------------------------------------------------------------------

fn orgs(p: &mut Section<'_>) {
    p.get(
        "/api/v1/orgs",
        Op::new("listOrgs", "A page of orgs, by id")
            .query("limit", false, int_in(1, 10_000))
            .query("after", false, org_id())
            .answers(
                200,
                "Orgs after `after`, at most `limit` (1000 by default).",
                array(schema_ref("Org")),
            )
            .errors(&[400]),
    );
    p.post(
        "/api/v1/orgs",
        Op::new("createOrg", "Create an org (idempotent)")
            .body(create_org())
            .answers(201, "Created.", schema_ref("CreatedOrg"))
            .answers(
                200,
                "It existed already, as asked.",
                schema_ref("CreatedOrg"),
            )
            .errors(&[400, 409, 413, 422]),
    );
    p.get(
        "/api/v1/orgs/{id}",
        Op::new("showOrg", "An org in detail")
            .path("id", org_id())
            .answers(200, "The org.", schema_ref("OrgDetail"))
            .errors(&[400, 404]),
    );
    p.post(
        "/api/v1/orgs/{id}/users",
        Op::new("addUser", "Add a user to the org's database")
            .path("id", org_id())
            .body(closed(
                &["email", "password"],
                json!({
                    "email": string(),
                    "name": string(),
                    "password": {"type": "string", "minLength": 8},
                }),
            ))
            .answers(201, "The node stored the user.", schema_ref("UserAdded"))
            .answers(
                202,
                "Sent; the node has not confirmed yet.",
                schema_ref("UserAdded"),
            )
            .errors(&[400, 404, 409, 413]),
    );
    p.get(
        "/api/v1/orgs/{id}/data-key",
        Op::new("readDataKey", "The org's data key, for a restore (audited)")
            .path("id", org_id())
            .answers(200, "The key.", record(json!({"data_key": string()})))
            .errors(&[400, 404]),
    );
    p.delete(
        "/api/v1/orgs/{id}/data-key",
        Op::new("destroyDataKey", "Destroy the org's data key")
            .path("id", org_id())
            .query("confirm", true, string())
            .answers(200, "Destroyed.", record(json!({"destroyed": boolean()})))
            .errors(&[400, 404]),
    );
    p.post(
        "/api/v1/orgs/{id}/move",
        Op::new("moveOrg", "Move the org live to another region (and node)")
            .path("id", org_id())
            .body(closed(
                &["to"],
                json!({
                    "to": slug(),
                    "node": nullable(string()),
                    "reason": nullable(string()),
                }),
            ))
            .answers(202, "The move's operation.", schema_ref("Operation"))
            .errors(&[400, 404, 409, 413, 422]),
    );
    p.post(
        "/api/v1/orgs/{id}/erase",
        Op::new("eraseOrg", "Erase the org everywhere")
            .path("id", org_id())
            .body(closed(&[], json!({"confirm": nullable(string())})))
            .answers(202, "The erasure's operation.", schema_ref("Operation"))
            .errors(&[400, 404, 409, 413]),
    );
    p.post(
        "/api/v1/orgs/{id}/residency",
        Op::new("setResidency", "Change the org's residency policy")
            .path("id", org_id())
            .body(closed(
                &["policy"],
                json!({
                    "policy": string(),
                    "reason": nullable(string()),
                    "move_to": nullable(string()),
                }),
            ))
            .answers(
                200,
                "Changed at once.",
                record(json!({"id": string(), "residency": string()})),
            )
            .answers(
                202,
                "The operation that carries it over first (`move_to`).",
                schema_ref("Operation"),
            )
            .errors(&[400, 404, 409, 413, 422]),
    );
    p.get(
        "/api/v1/orgs/{id}/export",
        Op::new("exportOrg", "The org's GDPR export")
            .path("id", org_id())
            .query("format", false, one_of_strings(&["sqlite", "jsonl"], false))
            .answers_as(
                200,
                "The export; its manifest (JSON) is in the `x-hemvist-manifest` header.",
                &[(
                    "application/octet-stream",
                    json!({"type": "string", "format": "binary"}),
                )],
            )
            .errors(&[400, 404]),
    );
    p.post(
        "/api/v1/orgs/{id}/accept-older",
        Op::new("acceptOlder", "Accept an older restore point")
            .path("id", org_id())
            .body(closed(&[], json!({"reason": nullable(string())})))
            .answers(
                200,
                "Accepted (audited).",
                record(json!({"org": string(), "accepted": {"type": "object"}})),
            )
            .errors(&[400, 404, 413]),
    );
}

/// `CreateOrg`. The name is checked after `trim`: 1 to 200 characters, none a control or
/// bidirectional-override character.
fn create_org() -> Value {
    let printable = format!("[^{CONTROL}{BIDI}]");
    let visible = format!("[^{WHITE_SPACE}{CONTROL}{BIDI}]");
    let name =
        format!("^[{WHITE_SPACE}]*{visible}(?:{printable}{{0,198}}{visible})?[{WHITE_SPACE}]*$");
    closed(
        &["id", "name"],
        json!({
            // A branch's `--` id is refused here: branches are made with `/branches`.
            "id": {"type": "string", "pattern": format!("^{SLUG}$"), "maxLength": 63},
            "name": {"type": "string", "pattern": name},
            "region": nullable(slug()),
            "ip": nullable(string()),
            "residency": nullable(string()),
            "durability": one_of_strings(&["async", "sync", ""], true),
        }),
    )
}

// ---- Nodes and regions ----------------------------------------------------------------------

fn nodes(p: &mut Section<'_>) {
    p.get(
        "/api/v1/regions",
        Op::new("listRegions", "The regions and their health").answers(
            200,
            "Every region.",
            array(schema_ref("Region")),
        ),
    );
    p.get(
        "/api/v1/nodes",
        Op::new("listNodes", "Every node known, with its session and load").answers(
            200,
            "Every node.",
            array(schema_ref("Node")),
        ),
    );
    p.post(
        "/api/v1/nodes/{id}/drain",
        Op::new("drainNode", "Move every org off the node")
            .path("id", slug())
            .answers(202, "The drain as it stands.", schema_ref("Drain"))
            .errors(&[400, 404, 409]),
    );
    p.post(
        "/api/v1/nodes/{id}/undrain",
        Op::new("undrainNode", "The node takes orgs again")
            .path("id", slug())
            .answers(200, "The node's drain state.", schema_ref("Drain"))
            .errors(&[400, 404]),
    );
}

// ---- Operations -----------------------------------------------------------------------------

fn operations(p: &mut Section<'_>) {
    p.get(
        "/api/v1/operations",
        Op::new("listOperations", "Every operation, newest first").answers(
            200,
            "The operations.",
            array(schema_ref("Operation")),
        ),
    );
    p.get(
        "/api/v1/operations/{id}",
        Op::new("showOperation", "An operation with its steps and progress")
            .path("id", operation_id())
            .answers(200, "The operation.", schema_ref("OperationView"))
            .errors(&[400, 404]),
    );
    p.post(
        "/api/v1/operations/{id}/cancel",
        Op::new("cancelOperation", "Cancel an operation")
            .path("id", operation_id())
            .answers(200, "The operation as it is now.", schema_ref("Operation"))
            .errors(&[400, 404, 409]),
    );
}

// ---- Audit ----------------------------------------------------------------------------------

fn audit(p: &mut Section<'_>) {
    // `limit` is clamped to 1..=10000, not refused: only its type bounds it.
    p.get(
        "/api/v1/audit",
        Op::new("listAudit", "Audit entries, oldest first")
            .query("limit", false, int_in(U32.0, U32.1))
            .query("org", false, org_id())
            .query("since", false, string())
            .query("after", false, int_in(I64.0, I64.1))
            .answers(200, "The entries.", array(schema_ref("AuditEntry")))
            .errors(&[400]),
    );
    p.get(
        "/api/v1/audit/verify",
        Op::new("verifyAudit", "Verify the audit chain").answers(
            200,
            "The verdict.",
            schema_ref("Verdict"),
        ),
    );
    p.get(
        "/api/v1/audit/report",
        Op::new("auditReport", "The residency report")
            .query("org", false, org_id())
            .query("from", false, string())
            .query("to", false, string())
            .query(
                "format",
                false,
                one_of_strings(&["json", "csv", "html"], false),
            )
            .answers_as(
                200,
                "The report, as asked (`json` by default).",
                &[
                    ("application/json", schema_ref("Report")),
                    ("text/csv", string()),
                    ("text/html", string()),
                ],
            )
            .errors(&[400, 404]),
    );
}

// ---- Migrations -----------------------------------------------------------------------------

fn migrations(p: &mut Section<'_>) {
    p.get(
        "/api/v1/migrations",
        Op::new("listMigrations", "The migration files held").answers(
            200,
            "The files and the version new orgs start at.",
            record(json!({
                "current": integer(),
                "files": array(record(json!({
                    "version": integer(),
                    "file": string(),
                    "checksum": string(),
                    "check": nullable(string()),
                }))),
            })),
        ),
    );
    // All refused if one of them is a held version edited.
    p.post(
        "/api/v1/migrations",
        Op::new("addMigrations", "Store the migration files not held yet")
            .body(closed(&["files"], json!({"files": migration_files()})))
            .answers(
                200,
                "The versions stored now, and those held already.",
                record(json!({"added": integers(), "known": integers()})),
            )
            .errors(&[400, 409, 413]),
    );
    p.get(
        "/api/v1/migrations/status",
        Op::new("migrationStatus", "The fleet's schema versions").answers(
            200,
            "The status.",
            schema_ref("SchemaStatus"),
        ),
    );
    p.post(
        "/api/v1/migrations/rollouts",
        Op::new("startRollout", "Start a rollout to a schema version")
            .body(closed(
                &[],
                json!({
                    "to": nullable(int_in(1, U32.1)),
                    "canary": nullable(string()),
                    "waves": nullable(strings()),
                    "bake_ms": nullable(int_in(U64.0, U64.1)),
                    "concurrency": nullable(int_in(1, 256)),
                    "dry_run": boolean(),
                    "errors_per_mille": nullable(int_in(U64.0, U64.1)),
                    "min_errors": nullable(int_in(U64.0, U64.1)),
                }),
            ))
            .answers(202, "The rollout's operation.", schema_ref("Operation"))
            .errors(&[400, 404, 409, 413]),
    );
    p.post(
        "/api/v1/operations/{id}/pause",
        Op::new("pauseRollout", "A rollout sends nothing new until resumed")
            .path("id", operation_id())
            .answers(200, "The rollout.", schema_ref("Operation"))
            .errors(&[400, 404, 409]),
    );
    p.post(
        "/api/v1/operations/{id}/resume",
        Op::new("resumeRollout", "A paused or halted rollout goes on")
            .path("id", operation_id())
            .body(closed(&[], json!({"to": nullable(int_in(U32.0, U32.1))})))
            .answers(200, "The rollout.", schema_ref("Operation"))
            .errors(&[400, 404, 409, 413]),
    );
    p.post(
        "/api/v1/orgs/{id}/pin",
        Op::new("pinOrg", "Pin the org at its version")
            .path("id", org_id())
            .body(closed(&[], json!({"reason": nullable(string())})))
            .answers(200, "Pinned.", schema_ref("Pin"))
            .errors(&[400, 404, 413]),
    );
    p.post(
        "/api/v1/orgs/{id}/unpin",
        Op::new("unpinOrg", "Let rollouts migrate the org again")
            .path("id", org_id())
            .answers(200, "Unpinned.", schema_ref("Pin"))
            .errors(&[400, 404]),
    );
    p.post(
        "/api/v1/orgs/{id}/rollback",
        Op::new("rollbackOrg", "Undo the org's last migration")
            .path("id", org_id())
            .body(closed(&[], json!({"confirm": boolean()})))
            .answers(202, "The rollback's operation.", schema_ref("Operation"))
            .errors(&[400, 404, 409, 413]),
    );
}

/// `GivenFiles`' files, as `parse_files` and `MigrationFile::parse` check them.
fn migration_files() -> Value {
    json!({
        "type": "array",
        "maxItems": 10_000,
        "items": closed(&["file", "sql"], json!({
            // `NNNN_name.sql`, 0001 to 9999.
            "file": {"type": "string", "pattern": MIGRATION_FILE},
            // Not only white space.
            "sql": {"type": "string", "pattern": format!("[^{WHITE_SPACE}]")},
        })),
    })
}

const MIGRATION_FILE: &str =
    r"^(?:[1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])_[a-z0-9_]{1,64}\.sql$";

// ---- Branches -------------------------------------------------------------------------------

fn branches(p: &mut Section<'_>) {
    p.post(
        "/api/v1/orgs/{id}/branches",
        Op::new("createBranch", "Make a branch of the org")
            .path("id", org_id())
            .body(closed(
                &["name"],
                json!({
                    // A slug, after `trim` (its length is checked with the parent's).
                    "name": {
                        "type": "string",
                        "pattern": format!("^[{WHITE_SPACE}]*{SLUG}[{WHITE_SPACE}]*$"),
                    },
                    "ttl_ms": nullable(int_in(1, U64.1)),
                    "at_ms": nullable(int_in(I64.0, I64.1)),
                    "mask": nullable(string()),
                    "region": nullable(string()),
                    "users": one_of_strings(&["copy", "none", ""], true),
                    "keepalive_on_use": boolean(),
                }),
            ))
            .answers(202, "The operation that makes it.", schema_ref("Operation"))
            .errors(&[400, 404, 409, 413, 422]),
    );
    p.get(
        "/api/v1/branches",
        Op::new("listBranches", "Every live branch (of an org)")
            .query("org", false, org_id())
            .answers(200, "The branches.", array(schema_ref("Branch")))
            .errors(&[400]),
    );
    p.get(
        "/api/v1/branches/{id}",
        Op::new("showBranch", "A branch")
            .path("id", org_id())
            .answers(200, "The branch.", schema_ref("Branch"))
            .errors(&[400, 404]),
    );
    p.delete(
        "/api/v1/branches/{id}",
        Op::new("destroyBranch", "Destroy a branch")
            .path("id", org_id())
            .answers(
                202,
                "The operation that destroys it.",
                schema_ref("Operation"),
            )
            .errors(&[400, 404, 409]),
    );
    p.post(
        "/api/v1/branches/{id}/keepalive",
        Op::new("keepBranchAlive", "Push the branch's expiry out")
            .path("id", org_id())
            .optional_body(closed(&[], json!({"for_ms": nullable(int_in(1, U64.1))})))
            .answers(200, "The branch as it is now.", schema_ref("Branch"))
            .errors(&[400, 404, 409])
            // The body is read as bytes, before `json_body`: axum's own text answers it.
            .answers_as(
                413,
                "The body is larger than allowed.",
                &[("text/plain", string())],
            ),
    );
}

// ---- Tokens ---------------------------------------------------------------------------------

fn tokens(p: &mut Section<'_>) {
    p.get(
        "/api/v1/tokens",
        Op::new("listTokens", "Every admin token made (never the secret)").answers(
            200,
            "The tokens.",
            array(schema_ref("Token")),
        ),
    );
    // The name `config` (the bootstrap token's actor) is refused too.
    p.post(
        "/api/v1/tokens",
        Op::new("createToken", "Make an admin token (its only showing)")
            .body(closed(&["name"], json!({"name": slug()})))
            .answers(
                201,
                "The token.",
                record(json!({"name": string(), "token": string()})),
            )
            .errors(&[400, 409, 413]),
    );
    p.post(
        "/api/v1/tokens/{name}/revoke",
        Op::new("revokeToken", "Revoke an admin token")
            .path("name", string())
            .answers(200, "The token, revoked.", schema_ref("Token"))
            .errors(&[400, 404]),
    );
}

// ---- System ---------------------------------------------------------------------------------

fn system(p: &mut Section<'_>) {
    p.get(
        "/api/v1/system",
        Op::new("showSystem", "Which hemvist system this is").answers(
            200,
            "Its id.",
            record(json!({"system_id": string()})),
        ),
    );
    p.get(
        "/api/v1/openapi.json",
        Op::public("openapi", "This document").answers(
            200,
            "The OpenAPI document.",
            json!({"type": "object"}),
        ),
    );
    p.get(
        "/healthz",
        Op::public("healthz", "The control plane answers").answers_as(
            200,
            "`ok`.",
            &[("text/plain", string())],
        ),
    );
    p.get(
        "/metrics",
        Op::public("metrics", "Metrics (Prometheus or OpenMetrics)")
            .answers_as(
                200,
                "The metrics.",
                &[
                    ("text/plain", string()),
                    ("application/openmetrics-text", string()),
                ],
            )
            .errors(&[500, 503]),
    );
}

// ---- Response schemas -----------------------------------------------------------------------

fn schemas() -> Value {
    json!({
        "Error": error(),
        "Org": org(),
        "CreatedOrg": record(json!({"created": boolean(), "org": schema_ref("Org")})),
        "OrgDetail": org_detail(),
        "UserAdded": record(json!({
            "org": string(),
            "email": string(),
            "command": string(),
            "state": {"type": "string", "enum": ["done", "pending"]},
        })),
        "Pin": record(json!({"org": string(), "pinned": boolean(), "changed": boolean()})),
        "Region": record(json!({
            "id": string(),
            "name": string(),
            "jurisdiction": string(),
            "countries": strings(),
            "object_store": string(),
            "object_store_endpoint": nullable(string()),
            "object_store_s3_region": nullable(string()),
            "nodes": integer(),
            "healthy_nodes": integer(),
            "default": boolean(),
        })),
        "Node": record(json!({
            "id": string(),
            "region": string(),
            "public_url": string(),
            "capacity": integer(),
            "version": string(),
            "last_seen_ms": integer(),
            "connected": boolean(),
            "healthy": boolean(),
            "lease_remaining_ms": integer(),
            "connected_for_ms": integer(),
            "tenants": integer(),
            "draining_since_ms": nullable(integer()),
            "disk_free_bytes": nullable(integer()),
            "disk_low": nullable(boolean()),
            "backup_lag_ms": nullable(integer()),
        })),
        "Drain": record(json!({
            "node": string(),
            "draining_since_ms": nullable(integer()),
            "orgs_left": integer(),
            "moving": integer(),
        })),
        "Operation": operation(),
        "OperationView": operation_view(),
        "Command": command(),
        "AuditEntry": record(json!({
            "seq": integer(),
            "at_ms": integer(),
            "actor": string(),
            "action": string(),
            "org": nullable(string()),
            "detail": any(),
        })),
        "Verdict": verdict(),
        "Report": report(),
        "SchemaStatus": schema_status(),
        "Branch": branch(),
        "Token": record(json!({
            "name": string(),
            "created_ms": integer(),
            "created_by": string(),
            "revoked_ms": nullable(integer()),
        })),
    })
}

/// `ApiError`'s body.
fn error() -> Value {
    let kinds: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
    record(json!({
        "error": record(json!({
            "kind": {"type": "string", "enum": kinds},
            "message": string(),
            "retryable": boolean(),
        })),
    }))
}

/// `OrgView`.
fn org_properties() -> Value {
    json!({
        "id": string(),
        "name": string(),
        "home_region": string(),
        "residency": string(),
        "allowed_regions": strings(),
        "node": string(),
        "node_url": nullable(string()),
        "generation": integer(),
        "placement_reason": string(),
        "created_ms": integer(),
        "durability": string(),
        "ready": boolean(),
        "schema_version": nullable(integer()),
        "schema_held": integer(),
        "schema_fingerprint": nullable(string()),
        "backed_up_ms": nullable(integer()),
    })
}

fn org() -> Value {
    record(org_properties())
}

/// `OrgDetail`: the `OrgView` flattened, and what the control plane knows of the org.
fn org_detail() -> Value {
    let mut properties = org_properties();
    let position = record(json!({
        "generation": integer(),
        "lsn": integer(),
        "reported_ms": integer(),
    }));
    let more = json!({
        "observed": array(record(json!({
            "node_id": string(),
            "generation": integer(),
            "schema_version": integer(),
            "schema_fingerprint": string(),
        }))),
        "replication": nullable(record(json!({
            "node": string(),
            "generation": integer(),
            "lsn": integer(),
            "shipped_ms": integer(),
            "unshipped_since_ms": nullable(integer()),
            "reported_ms": integer(),
        }))),
        "replication_lag_ms": nullable(integer()),
        "known_position": nullable(position),
        "accepts_older": boolean(),
        "commands": array(schema_ref("Command")),
        // `audit_for_org`'s entries carry no `org`.
        "audit": array(record(json!({
            "seq": integer(),
            "at_ms": integer(),
            "actor": string(),
            "action": string(),
            "detail": any(),
        }))),
        "locations": array(record(json!({
            "region": string(),
            "node_id": string(),
            "generation": integer(),
            "from_ms": integer(),
            "to_ms": nullable(integer()),
            "operation": nullable(string()),
        }))),
        "operation": nullable(operation()),
    });
    if let (Some(p), Some(m)) = (properties.as_object_mut(), more.as_object()) {
        p.extend(m.clone());
    }
    record(properties)
}

/// `OperationRecord`.
fn operation_properties() -> Value {
    let kinds: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
    let mut error_kinds: Vec<Value> = kinds.iter().map(|k| json!(k)).collect();
    error_kinds.push(Value::Null);
    json!({
        "id": string(),
        "kind": string(),
        "org": nullable(string()),
        "phase": string(),
        "requested_by": string(),
        "started_ms": integer(),
        "updated_ms": integer(),
        "finished_ms": nullable(integer()),
        "error_kind": {"type": "string", "nullable": true, "enum": error_kinds},
        "error": nullable(string()),
        // The domain's own JSON, by kind.
        "detail": any(),
        "parent": nullable(string()),
    })
}

fn operation() -> Value {
    record(operation_properties())
}

/// `Plane::operation_view`: the record, its steps, children, and what is known while it runs.
fn operation_view() -> Value {
    let mut properties = operation_properties();
    let more = json!({
        "steps": array(schema_ref("Command")),
        // A copy's progress as the node last reported it.
        "progress": {"type": "object", "nullable": true},
        "children": array(record(json!({
            "id": string(),
            "kind": string(),
            "phase": string(),
            "finished_ms": nullable(integer()),
            "error": nullable(string()),
        }))),
        "stalled": any(),
        "replication": nullable(record(json!({"generation": integer(), "lsn": integer()}))),
    });
    if let (Some(p), Some(m)) = (properties.as_object_mut(), more.as_object()) {
        p.extend(m.clone());
    }
    record(properties)
}

/// `CommandRecord` (its payload is never shown).
fn command() -> Value {
    let mut error_kinds: Vec<Value> = ErrorKind::ALL.iter().map(|k| json!(k.as_str())).collect();
    error_kinds.push(Value::Null);
    record(json!({
        "id": string(),
        "node_id": string(),
        "org": string(),
        "kind": string(),
        "generation": integer(),
        "state": {"type": "string", "enum": ["pending", "sent", "done", "retry", "failed"]},
        "attempts": integer(),
        "error_kind": {"type": "string", "nullable": true, "enum": error_kinds},
        "error": nullable(string()),
        "updated_ms": integer(),
        "operation": nullable(string()),
        "result": any(),
    }))
}

/// `audit::verify::Verdict`. The checkpoints' summary is left loose.
fn verdict() -> Value {
    record(json!({
        "ok": boolean(),
        "entries": integer(),
        "head_seq": integer(),
        "first_bad": nullable(record(json!({"seq": integer(), "problem": string()}))),
        "problems": strings(),
        "checkpoints": {"type": "object", "nullable": true},
        "warnings": strings(),
    }))
}

/// `audit::report::Report`; an org's intervals, moves and store findings are left loose.
fn report() -> Value {
    record(json!({
        "system": string(),
        "generated": string(),
        "window": record(json!({
            "from_ms": nullable(integer()),
            "to_ms": nullable(integer()),
        })),
        "verification": schema_ref("Verdict"),
        "orgs": array(record(json!({
            "org": string(),
            "name": string(),
            "policy": string(),
            "allowed_regions": strings(),
            "policy_history": array(strings()),
            "created": string(),
            "intervals": array(json!({"type": "object"})),
            "moves": array(json!({"type": "object"})),
            "branches": strings(),
            "stores": array(json!({"type": "object"})),
            "verdict": {"type": "string", "enum": ["compliant", "violation"]},
            "violations": strings(),
        }))),
        "compliant": integer(),
        "violations": integer(),
        "stores_verified": boolean(),
    }))
}

/// `schema::status::SchemaStatus`.
fn schema_status() -> Value {
    // `version` and `fingerprint` are left out when not known.
    let group = || {
        json!({
            "type": "object",
            "required": ["count", "orgs"],
            "properties": {
                "count": integer(),
                "orgs": strings(),
                "version": integer(),
                "fingerprint": string(),
            },
        })
    };
    let mut status = record(json!({
        "current": integer(),
        "newest": integer(),
        "tenants": integer(),
        "versions": array(record(json!({
            "version": integer(),
            "tenants": integer(),
            "regions": {"type": "object", "additionalProperties": integer()},
            "nodes": {"type": "object", "additionalProperties": integer()},
        }))),
        "mismatched": array(group()),
        "behind": group(),
        "unreported": group(),
        "pinned": array(record(json!({
            "org": string(),
            "reason": string(),
            "pinned_ms": integer(),
            "pinned_by": string(),
        }))),
        "failures": array(json!({
            "type": "object",
            "required": ["org", "node", "error"],
            "properties": {
                "org": string(),
                "node": string(),
                "file": string(),
                "statement": string(),
                "error": string(),
            },
        })),
    }));
    // The newest rollout, absent when there was none.
    status["properties"]["rollout"] = json!({"type": "object"});
    status
}

/// `BranchView`: the `BranchRecord` flattened, its state and where it lives.
fn branch() -> Value {
    record(json!({
        "id": string(),
        "parent": string(),
        "name": string(),
        "at_ms": integer(),
        "region": string(),
        "owner": string(),
        "created_ms": integer(),
        "ttl_ms": integer(),
        "expires_ms": integer(),
        "keepalive_on_use": boolean(),
        "users": string(),
        "masked": boolean(),
        "last_used_ms": nullable(integer()),
        "size_bytes": nullable(integer()),
        "destroyed_ms": nullable(integer()),
        "destroyed_why": nullable(string()),
        "state": {
            "type": "string",
            "enum": ["creating", "moving", "live", "expiring", "destroying", "destroyed"],
        },
        "node": nullable(string()),
        "node_url": nullable(string()),
        "operation": nullable(string()),
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const METHODS: [&str; 4] = ["get", "post", "put", "delete"];

    /// Every `(method, path)` the router in `mod.rs` serves, read from its source: each
    /// `.route(` call's first string literal, and the method routers named up to the next call.
    fn routed() -> BTreeSet<(String, String)> {
        let source = include_str!("mod.rs");
        let start = source
            .find("pub fn router")
            .expect("mod.rs has `pub fn router`");
        let end = source[start..]
            .find("\n}\n")
            .map(|e| start + e)
            .expect("router ends");
        let body = &source[start..end];
        let mut out = BTreeSet::new();
        for call in body.split(".route(").skip(1) {
            let call = call.split(".fallback(").next().unwrap_or(call);
            let open = call.find('"').expect("a route's path literal");
            let close = open + 1 + call[open + 1..].find('"').expect("its closing quote");
            let path = &call[open + 1..close];
            let full = if path.starts_with("/api/") || path == "/healthz" || path == "/metrics" {
                path.to_string()
            } else {
                format!("/api/v1{path}")
            };
            let rest = &call[close..];
            let mut found = false;
            for method in METHODS {
                let needle = format!("{method}(");
                let named = rest.match_indices(&needle).any(|(i, _)| {
                    !rest[..i]
                        .chars()
                        .next_back()
                        .is_some_and(|c| c.is_alphanumeric() || c == '_')
                });
                if named {
                    out.insert((method.to_string(), full.clone()));
                    found = true;
                }
            }
            assert!(found, "no method found for route {full}");
        }
        out
    }

    fn documented(doc: &Value) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("a path item").keys() {
                out.insert((method.clone(), path.clone()));
            }
        }
        out
    }

    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn the_document_is_well_formed() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.0.3");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let paths = doc["paths"].as_object().expect("paths");
        assert!(!paths.is_empty());
        let mut ids = BTreeSet::new();
        for (path, item) in paths {
            for (method, op) in item.as_object().expect("a path item") {
                assert!(METHODS.contains(&method.as_str()), "{method} {path}");
                let id = op["operationId"].as_str().expect("an operationId");
                assert!(ids.insert(id.to_string()), "operationId {id} twice");
                assert!(op["summary"].is_string(), "{method} {path}: no summary");
                let responses = op["responses"].as_object().expect("responses");
                assert!(
                    responses.keys().any(|s| s.starts_with('2')),
                    "{method} {path}: no success response"
                );
                // Every `{param}` of the path is declared, and nothing else is in the path.
                let declared: BTreeSet<&str> = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().expect("a name"))
                    .collect();
                let in_path: BTreeSet<&str> = path
                    .split('/')
                    .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                    .collect();
                assert_eq!(declared, in_path, "{method} {path}");
            }
        }
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for r in found {
            let pointer = r.strip_prefix('#').expect("a local $ref");
            assert!(doc.pointer(pointer).is_some(), "{r} points nowhere");
        }
    }

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let routed = routed();
        let documented = documented(&document());
        assert!(routed.len() > 30, "the scan found only {routed:?}");
        let missing: Vec<_> = routed.difference(&documented).collect();
        assert!(missing.is_empty(), "routes not documented: {missing:?}");
        let extra: Vec<_> = documented.difference(&routed).collect();
        assert!(extra.is_empty(), "documented but not routed: {extra:?}");
    }

    #[test]
    fn only_the_document_and_the_probes_need_no_token() {
        let doc = document();
        let mut public = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for op in item.as_object().expect("a path item").values() {
                if op.get("security") == Some(&json!([])) {
                    public.push(path.as_str());
                }
            }
        }
        public.sort();
        assert_eq!(public, ["/api/v1/openapi.json", "/healthz", "/metrics"]);
    }

    /// The `Error` schema is what `ApiError` answers.
    #[tokio::test]
    async fn the_error_schema_is_the_error_body() {
        use axum::response::IntoResponse;
        let response = super::super::ApiError(hemvist_proto::HemvistError::not_found("no org x"))
            .into_response();
        assert_eq!(response.status(), 404);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("the body");
        let body: Value = serde_json::from_slice(&bytes).expect("JSON");
        let schema = &document()["components"]["schemas"]["Error"];
        let keys = |v: &Value| -> BTreeSet<String> {
            v.as_object().expect("an object").keys().cloned().collect()
        };
        assert_eq!(keys(&body), keys(&schema["properties"]));
        let inner = &schema["properties"]["error"];
        assert_eq!(keys(&body["error"]), keys(&inner["properties"]));
        let kinds = inner["properties"]["kind"]["enum"]
            .as_array()
            .expect("kinds");
        assert!(kinds.contains(&body["error"]["kind"]));
    }
}
