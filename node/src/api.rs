//! The local HTTP API (DESIGN §8): JSON over HTTP for park staff, park software and the CLI.
//! Every `/v1` route but `/v1/health` needs `Authorization: Bearer <token>`. Errors are
//! `{"error": {"code", "message", "details"}}`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use base64::Engine as _;
use futures_util::StreamExt as _;
use kervan_protocol::records::{Application, FieldError, Park, Program, Startup};
use kervan_protocol::{DocId, Hash, ParkId, RecordId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use utoipa::OpenApi;

use crate::actor::{ReplicaHandle, Stopped};
use crate::query::{AppFilter, Filter, Page, QueryError, Sort};
use crate::replica::{AuditEntry, AuditFilter, Collection, ImportError, ReplicaError, Report};

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub replica: ReplicaHandle,
    /// The net actor, set once the network runs (after the documents load); never set for a
    /// node run without the network.
    pub net: Arc<std::sync::OnceLock<crate::net::NetHandle>>,
    pub token: Arc<str>,
    pub metrics: Arc<Metrics>,
    /// Raised when the replica hits a storage failure: the node must stop.
    pub fatal: watch::Sender<bool>,
    /// Largest JSON body, and largest bundle upload, in bytes.
    pub max_body: usize,
    pub max_bundle: usize,
}

/// Request counts by route and status, for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
}

/// An API error in the contract's shape.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Value,
}

/// The error body, for the OpenAPI document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ErrorDetail {
    /// `bad_request`, `invalid`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `too_large`, `unavailable` or `internal`.
    code: String,
    message: String,
    #[schema(value_type = Object)]
    details: Value,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Value::Null,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    fn invalid(errors: Vec<FieldError>) -> Self {
        let names: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid",
            message: format!("invalid fields: {}", names.join(", ")),
            details: json!(errors),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"code": self.code, "message": self.message, "details": self.details}});
        (self.status, Json(body)).into_response()
    }
}

impl From<Stopped> for ApiError {
    fn from(_: Stopped) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the node is shutting down",
        )
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        Self::bad_request(e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

impl ApiState {
    /// Maps a replica error to the contract, and raises the alarm on storage failures.
    fn fail(&self, e: ReplicaError) -> ApiError {
        match e {
            ReplicaError::Invalid(errors) => ApiError::invalid(errors.0),
            ReplicaError::NotFound { .. } => ApiError::not_found(e.to_string()),
            ReplicaError::Forbidden { ref owner, .. } => ApiError {
                details: json!({"owner": owner}),
                ..ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string())
            },
            ReplicaError::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            ReplicaError::NoLedger(_) => {
                ApiError::new(StatusCode::CONFLICT, "no_ledger", e.to_string())
            }
            ReplicaError::Store(_) | ReplicaError::Automerge(_) | ReplicaError::Snapshot { .. } => {
                tracing::error!(error = %e, "storage failure: stopping the node");
                let _ = self.fatal.send(true);
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
            ReplicaError::NoIdentity | ReplicaError::OwnChangeRefused(_) => {
                tracing::error!(error = %e, "internal error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
        }
    }
}

/// Reads a body of at most `limit` bytes. A larger one is read on (up to 8 times the limit)
/// and thrown away before the 413, so the client hears the answer rather than a broken pipe.
async fn read_body(body: Body, limit: usize) -> ApiResult<Bytes> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        seen = seen.saturating_add(chunk.len());
        if seen <= limit {
            buf.extend_from_slice(&chunk);
        } else if seen > limit.saturating_mul(8) {
            break;
        }
    }
    if seen > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is over the limit of {limit} bytes"),
        ));
    }
    Ok(Bytes::from(buf))
}

/// Parses a JSON object body; an over-limit body is 413, a malformed one 400.
async fn json_body(s: &ApiState, body: Body) -> ApiResult<Value> {
    let bytes = read_body(body, s.max_body).await?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::invalid(vec![FieldError {
            field: "(body)".into(),
            message: "expected a JSON object".into(),
        }]));
    }
    Ok(value)
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

fn record_id(park: &str, local: &str) -> ApiResult<RecordId> {
    let park: ParkId = park
        .parse()
        .map_err(|e: kervan_protocol::IdError| ApiError::not_found(e.to_string()))?;
    RecordId::new(park, local).map_err(|e| ApiError::not_found(e.to_string()))
}

// ---- routes ----

/// Builds the router. The state's `max_body` bounds JSON bodies, `max_bundle` bundle uploads.
pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/status", get(status))
        .route("/parks", get(parks))
        .route("/startups", get(list_startups).post(create_startup))
        .route(
            "/startups/{park}/{local}",
            get(get_startup).patch(patch_startup).delete(delete_startup),
        )
        .route("/programs", get(list_programs).post(create_program))
        .route(
            "/programs/{park}/{local}",
            get(get_program).patch(patch_program).delete(delete_program),
        )
        .route(
            "/applications",
            get(list_applications).post(create_application),
        )
        .route(
            "/applications/{park}/{local}",
            get(get_application).patch(patch_application),
        )
        .route("/applications/{park}/{local}/decision", put(put_decision))
        .route("/audit/changes", get(audit_log))
        .route("/audit/changes/{hash}", get(audit_change))
        .route("/audit/verify", get(audit_verify))
        .route("/audit/rejected", get(audit_rejected))
        .route("/openapi.json", get(openapi))
        .route("/bundle", get(export_bundle).post(import_bundle))
        // Bodies are read by `read_body`, which enforces the limits itself.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics))
        .nest("/v1", v1)
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

async fn auth(
    State(state): State<ApiState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(t) if bool::from(t.as_bytes().ct_eq(state.token.as_bytes())) => next.run(req).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "bad token").into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing Authorization: Bearer <token> (the token is in the data directory's api.token)",
        )
        .into_response(),
    }
}

async fn count(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16();
    if let Ok(mut m) = state.metrics.requests.lock() {
        *m.entry((route.clone(), status)).or_default() += 1;
    }
    tracing::debug!(
        route,
        status,
        ms = started.elapsed().as_secs_f64() * 1e3,
        "request"
    );
    response
}

/// Liveness.
#[utoipa::path(get, path = "/v1/health", responses((status = 200, description = "the node is up")))]
async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// What `GET /v1/status` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatusBody {
    pub park: ParkId,
    pub device: String,
    pub peer_id: String,
    pub federation: String,
    pub digest: Hash,
    pub counts: Value,
    pub changes: Value,
    /// Peers with their connection, last successful sync and score.
    pub peers: Vec<crate::net::PeerStatus>,
    pub store_bytes: u64,
}

/// The node: park, device, peer id, federation, state digest, counts, peers.
#[utoipa::path(get, path = "/v1/status", responses((status = 200, body = StatusBody), (status = 401, body = ErrorBody)))]
async fn status(State(s): State<ApiState>) -> ApiResult<Json<StatusBody>> {
    let peers = match s.net.get() {
        Some(net) => net.peers().await,
        None => Vec::new(),
    };
    let mut body = s
        .replica
        .call(|r| {
            let id = r.identity().cloned();
            let stats = r.stats().clone();
            StatusBody {
                park: id
                    .as_ref()
                    .map(|i| i.park.clone())
                    .unwrap_or_else(|| "unknown".parse().expect("a valid park id")),
                device: id.as_ref().map(|i| i.device().to_hex()).unwrap_or_default(),
                peer_id: id
                    .as_ref()
                    .and_then(|i| crate::net::peer_id_of(&i.device()))
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                federation: r.federation().to_string(),
                digest: r.digest(),
                counts: json!(r.index().counts()),
                changes: json!({
                    "accepted": r.accepted_count(),
                    "pending": r.pending_count(),
                    "rejected_since_start": stats.rejected.values().sum::<u64>(),
                }),
                peers: Vec::new(),
                store_bytes: r.store().size_on_disk().unwrap_or(0),
            }
        })
        .await?;
    body.peers = peers;
    Ok(Json(body))
}

use crate::store::Store as _;

/// Member parks with their device keys.
#[utoipa::path(get, path = "/v1/parks", responses((status = 200, body = Object)))]
async fn parks(State(s): State<ApiState>) -> ApiResult<Json<Value>> {
    let parks: Vec<Park> = s.replica.query(|index| index.parks()).await?;
    Ok(Json(json!({"items": parks, "next_cursor": null})))
}

/// Query parameters of the startup and program lists.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    park: Option<String>,
    country: Option<String>,
    sector: Option<String>,
    stage: Option<String>,
    kind: Option<String>,
    /// Case-insensitive text search.
    q: Option<String>,
    /// `id` (default) or `name`.
    sort: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

impl ListQuery {
    fn filter(self) -> ApiResult<Filter> {
        Ok(Filter {
            park: self
                .park
                .map(|p| p.parse())
                .transpose()
                .map_err(|e: kervan_protocol::IdError| ApiError::bad_request(e.to_string()))?,
            country: self.country,
            sector: self.sector,
            stage: self.stage,
            kind: self.kind,
            q: self.q.filter(|q| !q.is_empty()),
            sort: self
                .sort
                .map(|s| s.parse::<Sort>())
                .transpose()
                .map_err(ApiError::bad_request)?
                .unwrap_or_default(),
            limit: self.limit,
            cursor: self.cursor,
        })
    }
}

/// Startups of every park, filtered and paged.
#[utoipa::path(get, path = "/v1/startups", params(ListQuery), responses((status = 200, body = Object), (status = 400, body = ErrorBody)))]
async fn list_startups(
    State(s): State<ApiState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<Page<Startup>>> {
    let f = query(q)?.filter()?;
    Ok(Json(
        s.replica.query(move |index| index.startups(&f)).await??,
    ))
}

/// Programs of every park, filtered and paged.
#[utoipa::path(get, path = "/v1/programs", params(ListQuery), responses((status = 200, body = Object), (status = 400, body = ErrorBody)))]
async fn list_programs(
    State(s): State<ApiState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<Page<Program>>> {
    let f = query(q)?.filter()?;
    Ok(Json(
        s.replica.query(move |index| index.programs(&f)).await??,
    ))
}

/// The record as the index answers it, as JSON.
fn read(index: &crate::query::Index, c: Collection, id: &RecordId) -> Option<Value> {
    match c {
        Collection::Startups => index.startup(id).map(|x| json!(x)),
        Collection::Programs => index.program(id).map(|x| json!(x)),
        Collection::Applications => index.application(id).map(|x| json!(x)),
    }
}

/// Splits an optional caller-chosen `id` (a local id, or `<park>/<local>`) off a create body.
fn take_id(body: &mut Value) -> ApiResult<Option<String>> {
    let Some(id) = body.as_object_mut().and_then(|o| o.remove("id")) else {
        return Ok(None);
    };
    let Some(id) = id.as_str() else {
        return Err(ApiError::invalid(vec![FieldError {
            field: "id".into(),
            message: "expected a string".into(),
        }]));
    };
    Ok(Some(id.to_owned()))
}

async fn create(s: &ApiState, c: Collection, body: Body) -> ApiResult<(StatusCode, Json<Value>)> {
    let mut body = json_body(s, body).await?;
    let id = take_id(&mut body)?;
    let result = s
        .replica
        .call(move |r| {
            let local = match id.as_deref().map(|i| i.split_once('/')) {
                Some(Some((park, local))) => {
                    let own = r.identity().map(|i| i.park.to_string()).unwrap_or_default();
                    if park != own {
                        return Err(ReplicaError::Forbidden {
                            id: format!("{park}/{local}"),
                            owner: park
                                .parse()
                                .unwrap_or_else(|_| "unknown".parse().expect("valid")),
                            park: own
                                .parse()
                                .unwrap_or_else(|_| "unknown".parse().expect("valid")),
                        });
                    }
                    Some(local.to_owned())
                }
                Some(None) => id.clone(),
                None => None,
            };
            let id = r.create(c, local.as_deref(), &body)?;
            Ok(read(r.index(), c, &id).unwrap_or(Value::Null))
        })
        .await?;
    match result {
        Ok(v) => Ok((StatusCode::CREATED, Json(v))),
        Err(e) => Err(s.fail(e)),
    }
}

async fn fetch(s: &ApiState, c: Collection, park: &str, local: &str) -> ApiResult<Json<Value>> {
    let id = record_id(park, local)?;
    let found = s.replica.query(move |index| read(index, c, &id)).await?;
    found
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no {} {park}/{local}", singular(c))))
}

fn singular(c: Collection) -> &'static str {
    match c {
        Collection::Startups => "startup",
        Collection::Programs => "program",
        Collection::Applications => "application",
    }
}

async fn patch(
    s: &ApiState,
    c: Collection,
    park: &str,
    local: &str,
    body: Body,
) -> ApiResult<Json<Value>> {
    let id = record_id(park, local)?;
    let body = json_body(s, body).await?;
    let result = s
        .replica
        .call(move |r| {
            r.update(c, &id, &body)?;
            Ok(read(r.index(), c, &id).unwrap_or(Value::Null))
        })
        .await?;
    result.map(Json).map_err(|e| s.fail(e))
}

async fn delete(s: &ApiState, c: Collection, park: &str, local: &str) -> ApiResult<StatusCode> {
    let id = record_id(park, local)?;
    s.replica
        .call(move |r| r.remove(c, &id))
        .await?
        .map_err(|e| s.fail(e))?;
    Ok(StatusCode::NO_CONTENT)
}

macro_rules! record_routes {
    ($coll:expr, $path:literal, $ty:ty, $create:ident, $get:ident, $patch:ident, $delete:ident) => {
        /// Creates a record of this park; the node assigns the id unless `id` is given.
        #[utoipa::path(post, path = $path, request_body = Object,
            responses((status = 201, body = $ty), (status = 400, body = ErrorBody),
                      (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
                      (status = 413, body = ErrorBody)))]
        async fn $create(
            State(s): State<ApiState>,
            body: Body,
        ) -> ApiResult<(StatusCode, Json<Value>)> {
            create(&s, $coll, body).await
        }

        /// One record.
        #[utoipa::path(get, path = concat!($path, "/{park}/{local}"),
            params(("park" = String, Path), ("local" = String, Path)),
            responses((status = 200, body = $ty), (status = 404, body = ErrorBody)))]
        async fn $get(
            State(s): State<ApiState>,
            Path((park, local)): Path<(String, String)>,
        ) -> ApiResult<Json<Value>> {
            fetch(&s, $coll, &park, &local).await
        }

        /// Changes the given fields of a record of this park; `null` removes a field.
        #[utoipa::path(patch, path = concat!($path, "/{park}/{local}"), request_body = Object,
            params(("park" = String, Path), ("local" = String, Path)),
            responses((status = 200, body = $ty), (status = 400, body = ErrorBody),
                      (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
        async fn $patch(
            State(s): State<ApiState>,
            Path((park, local)): Path<(String, String)>,
            body: Body,
        ) -> ApiResult<Json<Value>> {
            patch(&s, $coll, &park, &local, body).await
        }

        /// Removes a record of this park.
        #[utoipa::path(delete, path = concat!($path, "/{park}/{local}"),
            params(("park" = String, Path), ("local" = String, Path)),
            responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
        async fn $delete(
            State(s): State<ApiState>,
            Path((park, local)): Path<(String, String)>,
        ) -> ApiResult<StatusCode> {
            delete(&s, $coll, &park, &local).await
        }
    };
}

record_routes!(
    Collection::Startups,
    "/v1/startups",
    Startup,
    create_startup,
    get_startup,
    patch_startup,
    delete_startup
);
record_routes!(
    Collection::Programs,
    "/v1/programs",
    Program,
    create_program,
    get_program,
    patch_program,
    delete_program
);

/// Creates an application of one of this park's startups to a program.
#[utoipa::path(post, path = "/v1/applications", request_body = Object,
    responses((status = 201, body = Application), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn create_application(
    State(s): State<ApiState>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    create(&s, Collection::Applications, body).await
}

/// One application, with its status and the host park's decision.
#[utoipa::path(get, path = "/v1/applications/{park}/{local}",
    params(("park" = String, Path), ("local" = String, Path)),
    responses((status = 200, body = Application), (status = 404, body = ErrorBody)))]
async fn get_application(
    State(s): State<ApiState>,
    Path((park, local)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    fetch(&s, Collection::Applications, &park, &local).await
}

/// Changes an application's message or withdraws it.
#[utoipa::path(patch, path = "/v1/applications/{park}/{local}", request_body = Object,
    params(("park" = String, Path), ("local" = String, Path)),
    responses((status = 200, body = Application), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn patch_application(
    State(s): State<ApiState>,
    Path((park, local)): Path<(String, String)>,
    body: Body,
) -> ApiResult<Json<Value>> {
    patch(&s, Collection::Applications, &park, &local, body).await
}

/// Query parameters of the application list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct AppQuery {
    /// The applicant: the startup's home park.
    park: Option<String>,
    program: Option<String>,
    /// The park hosting the program.
    host: Option<String>,
    /// `pending`, `accepted`, `rejected`, `waitlisted` or `withdrawn`.
    status: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// Applications, joined with the host park's decision.
#[utoipa::path(get, path = "/v1/applications", params(AppQuery), responses((status = 200, body = Object), (status = 400, body = ErrorBody)))]
async fn list_applications(
    State(s): State<ApiState>,
    q: Result<Query<AppQuery>, QueryRejection>,
) -> ApiResult<Json<Page<Application>>> {
    let q = query(q)?;
    let bad = |e: kervan_protocol::IdError| ApiError::bad_request(e.to_string());
    if let Some(st) = &q.status
        && !["pending", "accepted", "rejected", "waitlisted", "withdrawn"].contains(&st.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "status must be pending, accepted, rejected, waitlisted or withdrawn, found {st:?}"
        )));
    }
    let f = AppFilter {
        park: q.park.map(|p| p.parse()).transpose().map_err(bad)?,
        program: q.program.map(|p| p.parse()).transpose().map_err(bad)?,
        host: q.host.map(|p| p.parse()).transpose().map_err(bad)?,
        status: q.status,
        limit: q.limit,
        cursor: q.cursor,
    };
    Ok(Json(
        s.replica
            .query(move |index| index.applications(&f))
            .await??,
    ))
}

/// The host park's decision on an application to one of its programs.
#[utoipa::path(put, path = "/v1/applications/{park}/{local}/decision", request_body = Object,
    params(("park" = String, Path), ("local" = String, Path)),
    responses((status = 200, body = Application), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn put_decision(
    State(s): State<ApiState>,
    Path((park, local)): Path<(String, String)>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let id = record_id(&park, &local)?;
    let body = json_body(&s, body).await?;
    let result = s
        .replica
        .call(move |r| {
            r.decide(&id, &body)?;
            Ok(read(r.index(), Collection::Applications, &id).unwrap_or(Value::Null))
        })
        .await?;
    result.map(Json).map_err(|e| s.fail(e))
}

/// Query parameters of the audit log.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    /// `federation` or `park/<id>`.
    doc: Option<String>,
    park: Option<String>,
    /// A record id: only changes that wrote it.
    record: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// The signed history, newest first.
#[utoipa::path(get, path = "/v1/audit/changes", params(AuditQuery), responses((status = 200, body = Object), (status = 400, body = ErrorBody)))]
async fn audit_log(
    State(s): State<ApiState>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> ApiResult<Json<Page<AuditEntry>>> {
    let q = query(q)?;
    let bad = |e: kervan_protocol::IdError| ApiError::bad_request(e.to_string());
    let f = AuditFilter {
        doc: q.doc.map(|d| d.parse::<DocId>()).transpose().map_err(bad)?,
        park: q.park.map(|p| p.parse()).transpose().map_err(bad)?,
        record: q.record.map(|p| p.parse()).transpose().map_err(bad)?,
        limit: q.limit,
        cursor: q.cursor,
    };
    let page = s.replica.call(move |r| r.audit_log(&f)).await?;
    page.map(Json).map_err(|e| s.fail(e))
}

/// One stored change, with its signed envelope in base64.
#[utoipa::path(get, path = "/v1/audit/changes/{hash}", params(("hash" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn audit_change(
    State(s): State<ApiState>,
    Path(hash): Path<String>,
) -> ApiResult<Json<Value>> {
    let h: Hash = hash
        .parse()
        .map_err(|e: kervan_protocol::IdError| ApiError::not_found(e.to_string()))?;
    let found = s
        .replica
        .call(move |r| r.audit_change(&h))
        .await?
        .map_err(|e| s.fail(e))?;
    let (entry, envelope) =
        found.ok_or_else(|| ApiError::not_found(format!("no change {hash}")))?;
    let mut v = json!(entry);
    v["envelope"] = json!(base64::engine::general_purpose::STANDARD.encode(envelope));
    Ok(Json(v))
}

/// Re-verifies every stored change: counts and the digest.
#[utoipa::path(get, path = "/v1/audit/verify", responses((status = 200, body = Object)))]
async fn audit_verify(State(s): State<ApiState>) -> ApiResult<Json<Value>> {
    let report = s.replica.call(|r| r.verify_all()).await?;
    report.map(|r| Json(json!(r))).map_err(|e| s.fail(e))
}

/// Rejected changes with their reasons and the peer that sent them, newest first.
#[utoipa::path(get, path = "/v1/audit/rejected", responses((status = 200, body = Object)))]
async fn audit_rejected(State(s): State<ApiState>) -> ApiResult<Json<Value>> {
    let rejected = s
        .replica
        .call(|r| r.store().rejected())
        .await?
        .map_err(|e| s.fail(e.into()))?;
    let mut items: Vec<Value> = rejected
        .into_iter()
        .map(|r| {
            json!({
                "key": r.key, "doc": r.doc, "code": r.code, "reason": r.reason,
                "source": r.source, "at": r.at,
            })
        })
        .collect();
    items.sort_by(|a, b| b["at"].as_i64().cmp(&a["at"].as_i64()));
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

/// Query parameters of the bundle export.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct ExportQuery {
    /// Only changes authored at or after this Unix time (seconds).
    since: Option<i64>,
}

/// Every accepted signed change as a bundle (`application/octet-stream`).
#[utoipa::path(get, path = "/v1/bundle", params(ExportQuery), responses((status = 200, content_type = "application/octet-stream")))]
async fn export_bundle(
    State(s): State<ApiState>,
    q: Result<Query<ExportQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let since = query(q)?.since;
    let bundle = s
        .replica
        .call(move |r| r.export(since))
        .await?
        .map_err(|e| s.fail(e))?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        bundle.encode(),
    )
        .into_response())
}

/// Imports a bundle; answers for each change: accepted, duplicate, pending or rejected.
#[utoipa::path(post, path = "/v1/bundle", request_body(content_type = "application/octet-stream", content = Vec<u8>),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
async fn import_bundle(State(s): State<ApiState>, body: Body) -> ApiResult<Json<Value>> {
    let bytes = read_body(body, s.max_bundle).await?;
    let result = s.replica.call(move |r| r.import(&bytes, "import")).await?;
    let reports: Vec<Report> = match result {
        Ok(r) => r,
        Err(ImportError::Replica(e)) => return Err(s.fail(e)),
        Err(e) => return Err(ApiError::bad_request(e.to_string())),
    };
    let mut summary: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &reports {
        let k = match r.outcome {
            crate::replica::Outcome::Accepted => "accepted",
            crate::replica::Outcome::Duplicate => "duplicate",
            crate::replica::Outcome::Pending { .. } => "pending",
            crate::replica::Outcome::Rejected { .. } => "rejected",
        };
        *summary.entry(k).or_default() += 1;
    }
    Ok(Json(json!({"items": reports, "summary": summary})))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "text/plain")))]
async fn metrics(State(s): State<ApiState>) -> ApiResult<Response> {
    let requests = s
        .metrics
        .requests
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    let text = s
        .replica
        .call(move |r| crate::metrics::render(r, &requests))
        .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// The OpenAPI document of this API.
#[utoipa::path(get, path = "/v1/openapi.json", responses((status = 200, body = Object)))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The OpenAPI document, generated from the handlers and types above.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Kervan node API",
        description = "The local HTTP API of a Kervan park node. Every /v1 route but /v1/health needs Authorization: Bearer <token>."
    ),
    paths(
        health,
        status,
        parks,
        list_startups,
        create_startup,
        get_startup,
        patch_startup,
        delete_startup,
        list_programs,
        create_program,
        get_program,
        patch_program,
        delete_program,
        list_applications,
        create_application,
        get_application,
        patch_application,
        put_decision,
        audit_log,
        audit_change,
        audit_verify,
        audit_rejected,
        export_bundle,
        import_bundle,
        metrics,
        openapi
    ),
    components(schemas(
        ErrorBody,
        Startup,
        Program,
        Application,
        Park,
        AuditEntry,
        StatusBody,
        crate::net::PeerStatus
    ))
)]
pub struct ApiDoc;

/// The OpenAPI document as pretty JSON: what `/v1/openapi.json` serves and the repo keeps.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises")
}

#[cfg(test)]
mod tests {
    /// The OpenAPI document in the repository is the one the code generates. Regenerate it
    /// with `KERVAN_BLESS=1 cargo test -p kervan-node openapi`.
    #[test]
    fn openapi_document_in_the_repo_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
        let current = super::openapi_json() + "\n";
        if std::env::var_os("KERVAN_BLESS").is_some() {
            std::fs::write(path, &current).expect("write docs/openapi.json");
        }
        let kept = std::fs::read_to_string(path).expect("docs/openapi.json is in the repo");
        assert!(kept == current, "docs/openapi.json is stale: regenerate it");
    }
}
