//! The sockets view: `/sockets.json` answers a query (see `inspect::query`) with the sockets
//! it lists; `/sockets` is the page that asks it (`web/sockets.html`).

use std::sync::Arc;

use axum::{
    extract::State,
    http::{StatusCode, Uri, header},
    response::{Html, IntoResponse, Response},
};

use super::{WebState, html_escape};
use crate::inspect::{ChooseError, SocketList, SocketQuery};

/// Answers the sockets view's queries (the collector's `sockets`).
pub type SocketsView = Arc<dyn Fn(&SocketQuery) -> Result<SocketList, ChooseError> + Send + Sync>;

pub async fn sockets_json(State(state): State<WebState>, uri: Uri) -> Response {
    let Some(view) = state.sockets.clone() else {
        return (StatusCode::NOT_FOUND, "no sockets view in this daemon\n").into_response();
    };
    let query = match SocketQuery::parse(uri.query()) {
        Ok(query) => query,
        Err(error) => return (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response(),
    };
    // Off the async thread: it reads the kernel's records and waits for the poll thread.
    let answer = tokio::task::spawn_blocking(move || view(&query)).await;
    match answer {
        Ok(Ok(list)) => match serde_json::to_vec(&list) {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(error) => internal(&format!("cannot encode the sockets: {error}")),
        },
        Ok(Err(ChooseError::Query(error))) => {
            (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response()
        }
        Ok(Err(error)) => internal(&error.to_string()),
        Err(error) => internal(&format!("the sockets view failed: {error}")),
    }
}

fn internal(message: &str) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{message}\n")).into_response()
}

pub async fn sockets_page(State(state): State<WebState>) -> Html<String> {
    const PAGE: &str = include_str!("../web/sockets.html");
    Html(
        PAGE.replace("__TELEMETRY_PATH__", &html_escape(&state.telemetry_path))
            .replace("__VERSION__", &html_escape(crate::metrics::VERSION)),
    )
}
