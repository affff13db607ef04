//! `/v1/replays`: start, poll and stop replays of recordings against a target. A replay is the
//! library's [`Replay`], the same the `replay` command runs, with the same defaults
//! ([`ReplayOptions::default`]); this module validates the call (and the target against
//! `--allow-target`), keeps the replays it started, and reports their progress.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, ApiResult, Reply};
use super::metrics::ReplayCounters;
use super::replay_call::StartReplay;
use super::{Agent, AgentConfig, forget_oldest, lock};
use crate::replay::engine::Replay;
use crate::replay::html::report_page;
use crate::replay::load::{ReplaySource, endpoints, load_replay};
use crate::replay::report::ReplayReport;
use crate::replay::target::Target;

/// Where a replay is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReplayState {
    /// Sending.
    Running,
    /// Its end was reached; its report is on the way.
    Finishing,
    /// Ended, every request answered.
    Finished,
    /// Ended, some request got no response.
    Failed,
    /// Ended by `DELETE /v1/replays/{id}`.
    Stopped,
}

/// The answer to a started replay.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayStarted {
    /// The replay's id on this agent, for `GET` and `DELETE /v1/replays/{id}`.
    pub id: String,
    /// As asked.
    pub recording: String,
    /// As asked.
    pub target: String,
    /// Always `running`.
    pub state: ReplayState,
}

/// A replay's state, progress and report so far (final once ended).
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayView {
    /// The replay's id on this agent.
    pub id: String,
    /// The recording replayed.
    pub recording: String,
    /// Where it sends.
    pub target: String,
    pub state: ReplayState,
    /// Counts for a progress bar.
    pub progress: Progress,
    /// The report so far, as `capture replay --json` prints it (final once ended).
    pub report: ReplayReport,
}

/// How far a replay got.
#[derive(Debug, Serialize, ToSchema)]
pub struct Progress {
    /// Messages of the recording read so far (first pass).
    pub read: u64,
    /// Messages the recording holds, when known.
    pub messages: Option<u64>,
    /// Sends planned so far (requests × loops × copies, as the recording is read).
    pub planned: u64,
    /// Completed or failed.
    pub done: u64,
    /// Got a complete response.
    pub completed: u64,
    /// Got no response (refused, timed out, reset...).
    pub failed: u64,
}

/// `GET /v1/replays`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayList {
    /// Running ones, and up to 200 that ended.
    pub replays: Vec<ReplayView>,
}

/// A replay this agent runs or ran.
struct ReplayEntry {
    recording: String,
    target: String,
    baseline: Option<String>,
    replay: Option<Replay>,
    report: Option<ReplayReport>,
    stopped_by_request: bool,
    /// Where reading the recording was when the replay ended.
    last_position: (u64, Option<u64>),
}

impl ReplayEntry {
    /// Its state and report: live while it runs, final once it ended.
    fn view(&self, id: &str) -> ReplayView {
        let (read, messages) = self
            .replay
            .as_ref()
            .map_or(self.last_position, Replay::position);
        let (state, report) = match (&self.replay, &self.report) {
            (Some(r), _) => (ReplayState::Running, r.report_now()),
            (None, Some(report)) => (
                if self.stopped_by_request {
                    ReplayState::Stopped
                } else if report.has_failures() {
                    ReplayState::Failed
                } else {
                    ReplayState::Finished
                },
                report.clone(),
            ),
            (None, None) => (ReplayState::Finishing, ReplayReport::empty()),
        };
        ReplayView {
            id: id.to_string(),
            recording: self.recording.clone(),
            target: self.target.clone(),
            state,
            progress: Progress {
                read,
                messages,
                planned: report.planned,
                done: report.completed + report.failed,
                completed: report.completed,
                failed: report.failed,
            },
            report,
        }
    }
}

/// The replays this agent started, running and recently finished.
#[derive(Default)]
pub(super) struct Replays {
    entries: Mutex<BTreeMap<String, ReplayEntry>>,
    next_id: AtomicU64,
}

impl Replays {
    /// Opens the recording and starts the replay, which reads it as it goes.
    async fn start(
        &self,
        config: &AgentConfig,
        req: StartReplay,
    ) -> Result<ReplayStarted, ApiError> {
        let target: Target = req
            .target
            .parse()
            .map_err(|e: anyhow::Error| ApiError::BadRequest(format!("target: {e:#}")))?;
        check_target(&config.allow_targets, &target)?;
        let baseline_target = match &req.baseline {
            Some(url) => {
                let baseline: Target = url
                    .parse()
                    .map_err(|e: anyhow::Error| ApiError::BadRequest(format!("baseline: {e:#}")))?;
                check_target(&config.allow_targets, &baseline)?;
                Some(baseline)
            }
            None => None,
        };
        let (endpoint, baseline) = endpoints(&target, baseline_target.as_ref(), &req.tls_trust())
            .await
            .map_err(|e| ApiError::BadRequest(format!("target: {e:#}")))?;
        let options = req.options(baseline)?;
        let store = config
            .store
            .with_kafka(req.kafka.as_deref(), req.topic.as_deref());
        let source = ReplaySource::Recording(req.recording.clone());
        let loaded = {
            let options = options.clone();
            tokio::task::spawn_blocking(move || load_replay(&source, &store, &options))
                .await
                .context("loading the recording")??
        };
        // The replay's tasks, timers and pacer belong to the runtime current at its start.
        let _on_replay_runtime = config.replay_runtime.as_ref().map(|r| r.enter());
        let replay = loaded
            .start(endpoint, &options)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let id = format!("r{}", self.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        let mut entries = lock(&self.entries);
        entries.insert(
            id.clone(),
            ReplayEntry {
                recording: req.recording.clone(),
                target: req.target.clone(),
                baseline: req.baseline.clone(),
                replay: Some(replay),
                report: None,
                stopped_by_request: false,
                last_position: (0, None),
            },
        );
        forget_oldest(&mut entries, |e| e.replay.is_none());
        Ok(ReplayStarted {
            id,
            recording: req.recording,
            target: req.target,
            state: ReplayState::Running,
        })
    }

    /// Moves replays that ended into their final report.
    async fn settle(&self) {
        let done: Vec<(String, Replay)> = {
            let mut entries = lock(&self.entries);
            let ids: Vec<String> = entries
                .iter()
                .filter(|(_, e)| e.replay.as_ref().is_some_and(Replay::is_finished))
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| {
                    let e = entries.get_mut(&id)?;
                    let r = e.replay.take()?;
                    e.last_position = r.position();
                    Some((id, r))
                })
                .collect()
        };
        for (id, replay) in done {
            let report = replay.finish().await;
            if let Some(e) = lock(&self.entries).get_mut(&id) {
                e.report = Some(report);
            }
        }
    }

    async fn get(&self, id: &str) -> Result<ReplayView, ApiError> {
        self.settle().await;
        lock(&self.entries)
            .get(id)
            .map(|e| e.view(id))
            .ok_or_else(|| ApiError::NotFound(format!("replay {id:?} not found")))
    }

    /// The replay's report page: live while it runs, final once it ended.
    async fn page(&self, id: &str) -> Result<String, ApiError> {
        self.settle().await;
        let entries = lock(&self.entries);
        let e = entries
            .get(id)
            .ok_or_else(|| ApiError::NotFound(format!("replay {id:?} not found")))?;
        let report = e.view(id).report;
        Ok(report_page(
            &format!("replay {id} of recording {}", e.recording),
            &e.target,
            e.baseline.as_deref(),
            &report,
        ))
    }

    async fn list(&self) -> ReplayList {
        self.settle().await;
        let replays = lock(&self.entries)
            .iter()
            .map(|(id, e)| e.view(id))
            .collect();
        ReplayList { replays }
    }

    /// Stops a running replay (the requests in flight get a short grace) and gives its
    /// final report; a replay that already ended is simply shown.
    async fn stop(&self, id: &str) -> Result<ReplayView, ApiError> {
        let replay = {
            let mut entries = lock(&self.entries);
            let e = entries
                .get_mut(id)
                .ok_or_else(|| ApiError::NotFound(format!("replay {id:?} not found")))?;
            match e.replay.take() {
                Some(r) => {
                    e.stopped_by_request = true;
                    e.last_position = r.position();
                    r
                }
                None => return Ok(e.view(id)),
            }
        };
        replay.stop("stopped by DELETE /v1/replays/{id}");
        let report = replay.finish().await;
        let mut entries = lock(&self.entries);
        let e = entries
            .get_mut(id)
            .ok_or_else(|| ApiError::NotFound(id.to_string()))?;
        e.report = Some(report);
        Ok(e.view(id))
    }

    /// Every replay's counters for /metrics: live for running ones, final for the rest.
    pub(super) async fn counters(&self) -> Vec<ReplayCounters> {
        self.settle().await;
        lock(&self.entries)
            .iter()
            .map(|(id, e)| match (&e.replay, &e.report) {
                (Some(r), _) => ReplayCounters::new(id, true, &r.report_now()),
                (None, Some(rep)) => ReplayCounters::new(id, false, rep),
                (None, None) => ReplayCounters::new(id, false, &ReplayReport::empty()),
            })
            .collect()
    }

    /// Stops every running replay.
    pub(super) async fn shutdown(&self) {
        let replays: Vec<Replay> = lock(&self.entries)
            .values_mut()
            .filter_map(|e| e.replay.take())
            .collect();
        for r in replays {
            r.stop("agent shutting down");
            r.finish().await;
        }
    }
}

/// 403 unless `target` is in the allowlist (an empty list allows any target).
fn check_target(allow: &[String], target: &Target) -> Result<(), ApiError> {
    let wanted = format!("{}:{}", target.host, target.port);
    if allow.is_empty() || allow.contains(&wanted) {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "target: {wanted} is not in this agent's --allow-target list ({})",
        allow.join(", ")
    )))
}

/// Start a replay
///
/// Reads the recording, keeps the requests the filters pass, applies the rewrites, plans the
/// sends and starts them; answers once sending started.
#[utoipa::path(
    post,
    path = "/v1/replays",
    operation_id = "start_replay",
    tag = "replays",
    request_body = StartReplay,
    responses(
        (status = 201, description = "Replay running", body = ReplayStarted),
        (status = 400, description = "Bad field (target, pace, filters, rewrites, durations) or nothing to replay", body = ErrorBody),
        (status = 403, description = "Target outside the agent's --allow-target list", body = ErrorBody),
        (status = 404, description = "No such recording", body = ErrorBody),
    )
)]
pub(super) async fn start(
    State(agent): State<Arc<Agent>>,
    ApiJson(req): ApiJson<StartReplay>,
) -> ApiResult<ReplayStarted> {
    let started = agent.replays.start(&agent.config, req).await?;
    Ok(Reply(StatusCode::CREATED, started))
}

/// List replays
///
/// The replays this agent runs and the last ones it ran.
#[utoipa::path(
    get,
    path = "/v1/replays",
    operation_id = "list_replays",
    tag = "replays",
    responses((status = 200, description = "Replays", body = ReplayList))
)]
pub(super) async fn list(State(agent): State<Arc<Agent>>) -> ApiResult<ReplayList> {
    Ok(Reply::ok(agent.replays.list().await))
}

/// Show a replay
///
/// Its state, progress and the report so far (final once it ended).
#[utoipa::path(
    get,
    path = "/v1/replays/{id}",
    operation_id = "get_replay",
    tag = "replays",
    params(("id" = String, Path, description = "Replay id, as the start call answered (r1, r2...)")),
    responses(
        (status = 200, description = "Replay", body = ReplayView),
        (status = 404, description = "No such replay on this agent", body = ErrorBody),
    )
)]
pub(super) async fn get(
    State(agent): State<Arc<Agent>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<ReplayView> {
    Ok(Reply::ok(agent.replays.get(&id).await?))
}

/// Show a replay's report page
///
/// One self-contained HTML page (no network fetches): throughput and latency over time, the
/// status mix and, for a replay with `diff`, the differences per endpoint with examples. The
/// same page `capture replay --report FILE.html` writes.
#[utoipa::path(
    get,
    path = "/v1/replays/{id}/report",
    operation_id = "get_replay_report",
    tag = "replays",
    params(("id" = String, Path, description = "Replay id, as the start call answered (r1, r2...)")),
    responses(
        (status = 200, description = "The report page", content_type = "text/html", body = String),
        (status = 404, description = "No such replay on this agent", body = ErrorBody),
    )
)]
pub(super) async fn report(
    State(agent): State<Arc<Agent>>,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::response::Html<String>, ApiError> {
    Ok(axum::response::Html(agent.replays.page(&id).await?))
}

/// Stop a replay
///
/// Stops sending (requests in flight get a short grace for their answers) and answers with
/// the final report; a replay that already ended is shown as it is.
#[utoipa::path(
    delete,
    path = "/v1/replays/{id}",
    operation_id = "stop_replay",
    tag = "replays",
    params(("id" = String, Path, description = "Replay id, as the start call answered (r1, r2...)")),
    responses(
        (status = 200, description = "The final report", body = ReplayView),
        (status = 404, description = "No such replay on this agent", body = ErrorBody),
    )
)]
pub(super) async fn stop(
    State(agent): State<Arc<Agent>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<ReplayView> {
    Ok(Reply::ok(agent.replays.stop(&id).await?))
}
