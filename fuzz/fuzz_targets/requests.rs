//! Every finmatch RPC as the server receives it: arbitrary bytes framed as gRPC messages, sent
//! to the served routes with a caller the method admits, through tonic's decoding (bodies
//! flagged as gzip included, which finmatch refuses) into the handler's conversion into its use
//! case's command.
//!
//! The database is unreachable (a closed port), so a request that converts fails UNAVAILABLE at
//! its first query and nothing else is needed. Every answer must be one a caller can act on:
//! - no panic, and an answer within [`ANSWER_WITHIN`] (DESIGN §6: calls fail fast while the
//!   database is down);
//! - never UNKNOWN, nor UNIMPLEMENTED (each path is served) but for a compressed body, which
//!   finmatch does not take;
//! - INTERNAL only for a body tonic cannot decode ([`UNDECODABLE`]): anything that decodes is
//!   finmatch's to judge;
//! - INVALID_ARGUMENT always with a BadRequest detail naming at least one field and what is
//!   wrong with it, each field a path through the request message's fields (as the proto
//!   describes them), so a client can show the error next to what it sent.
//!
//! Input: method (1 byte, an index into the sorted finmatch paths), caller (1 byte, among the
//! roles the method admits), options (1 byte: bit 0 sends `grpc-encoding: gzip`), then frames,
//! each a compression flag (1 byte) and a length (2 bytes, big-endian) before its bytes.

#![no_main]

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use finmatch::domain::Role;
use finmatch::service::events::ReferralFeed;
use finmatch::service::{App, Principal, access};
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use prost_types::{DescriptorProto, FileDescriptorSet};
use tonic::Code;
use tonic_types::StatusExt;
use tower::ServiceExt;
use uuid::Uuid;

/// Longest a call may take to be answered, with the database down.
const ANSWER_WITHIN: Duration = Duration::from_secs(6);
/// As the server's default `--max-message-bytes`.
const MAX_DECODING: usize = 4 * 1024 * 1024;

/// How tonic (0.14) and prost begin their INTERNAL messages for a body that cannot be read: not
/// a protobuf message, a bad compression flag, a gzip stream that does not inflate, no message.
const UNDECODABLE: [&str; 5] = [
    "failed to decode Protobuf message",
    "Missing request message",
    "protocol error",
    "Error decompressing",
    "Unexpected EOF decoding stream",
];

struct Harness {
    runtime: tokio::runtime::Runtime,
    routes: tonic::service::Routes,
    /// Every served finmatch path, sorted, with the roles it admits.
    methods: Vec<(String, &'static [Role])>,
    /// Every finmatch message by full name (`.finmatch.v1.Need`), and each method's request type.
    messages: HashMap<String, DescriptorProto>,
    inputs: HashMap<String, String>,
}

static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let routes = runtime.block_on(async {
        // Port 1 on loopback refuses at once: every query fails UNAVAILABLE.
        let pool = finmatch::storage::pool(
            "postgres://fuzz@127.0.0.1:1/fuzz?sslmode=disable",
            1,
            Duration::from_secs(1),
        )
        .unwrap();
        let app = App::new(pool);
        let feed = ReferralFeed::new(Duration::from_secs(10));
        // A closed feed: a watch stream that converts ends UNAVAILABLE at once.
        feed.close();
        finmatch::grpc::routes(&app, &feed, MAX_DECODING, Duration::from_secs(1))
    });
    let mut methods: Vec<(String, &'static [Role])> = finmatch::grpc::methods::served()
        .paths()
        .filter(|p| p.starts_with("/finmatch.v1."))
        .map(|p| {
            let rpc = p.rsplit('/').next().unwrap();
            let roles = access::roles(rpc).unwrap_or_else(|| panic!("{p} has no roles"));
            (p.to_owned(), roles)
        })
        .collect();
    methods.sort();
    let set = FileDescriptorSet::decode(finmatch::proto::FILE_DESCRIPTOR_SET).unwrap();
    let (mut messages, mut inputs) = (HashMap::new(), HashMap::new());
    for file in set.file {
        let package = file.package().to_owned();
        for message in file.message_type {
            nested(&format!(".{package}"), message, &mut messages);
        }
        for service in &file.service {
            for method in &service.method {
                inputs.insert(
                    format!("/{package}.{}/{}", service.name(), method.name()),
                    method.input_type().to_owned(),
                );
            }
        }
    }
    Harness {
        runtime,
        routes,
        methods,
        messages,
        inputs,
    }
});

fn nested(scope: &str, message: DescriptorProto, into: &mut HashMap<String, DescriptorProto>) {
    let name = format!("{scope}.{}", message.name());
    for inner in &message.nested_type {
        nested(&name, inner.clone(), into);
    }
    into.insert(name, message);
}

/// Whether a violation's `field` (`need.collateral[2]`, `decision`) is a path through the request
/// message's fields, or ends at one of its oneofs, so a client can put the error next to what it
/// sent.
fn names_a_field(h: &Harness, input: &str, path: &str) -> bool {
    let mut message = h.messages.get(input);
    for segment in path.split('.') {
        let name = segment.split('[').next().unwrap_or_default();
        let Some(current) = message else {
            // Inside a well-known type (Timestamp, FieldMask): not described here.
            return true;
        };
        let Some(field) = current.field.iter().find(|f| f.name() == name) else {
            // A oneof (`decision`: neither approve nor decline) is named as the proto names it.
            return path.ends_with(segment) && current.oneof_decl.iter().any(|o| o.name() == name);
        };
        message = h.messages.get(field.type_name());
    }
    true
}

fn principal(role: Role) -> Principal {
    Principal {
        credential_id: Uuid::from_u128(0xC0FFEE),
        role,
        lender_id: (role == Role::Lender).then(|| Uuid::from_u128(0x1E4DE5)),
        expires_at: None,
        certificate_subject: None,
    }
}

/// The gRPC body: each frame's flag and length prefix, then its bytes.
fn frames(mut data: &[u8]) -> Bytes {
    let mut body = BytesMut::new();
    while let [flag, hi, lo, rest @ ..] = data {
        let len = (usize::from(*hi) << 8 | usize::from(*lo)).min(rest.len());
        body.put_u8(*flag);
        body.put_u32(len as u32);
        body.put_slice(&rest[..len]);
        data = &rest[len..];
    }
    body.freeze()
}

fuzz_target!(|data: &[u8]| {
    let [method, caller, options, rest @ ..] = data else {
        return;
    };
    let h = &*HARNESS;
    let (path, roles) = &h.methods[usize::from(*method) % h.methods.len()];
    let role = roles[usize::from(*caller) % roles.len()];

    let mut request = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("http://finmatch.fuzz{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    let gzip = options & 1 == 1;
    if gzip {
        request = request.header("grpc-encoding", "gzip");
    }
    let mut request = request.body(Full::new(frames(rest))).unwrap();
    // What the auth layer puts there on a real connection.
    request.extensions_mut().insert(principal(role));

    let status = h.runtime.block_on(async {
        let call = async {
            let response = h.routes.clone().oneshot(request).await.unwrap();
            let headers = response.headers().clone();
            let body = response.into_body().collect().await;
            match tonic::Status::from_header_map(&headers) {
                Some(status) => status,
                None => {
                    let trailers = body
                        .expect("the response body ends cleanly")
                        .trailers()
                        .cloned()
                        .unwrap_or_default();
                    tonic::Status::from_header_map(&trailers)
                        .unwrap_or_else(|| tonic::Status::ok(""))
                }
            }
        };
        tokio::time::timeout(ANSWER_WITHIN, call)
            .await
            .unwrap_or_else(|_| panic!("{path} as {role:?}: no answer within {ANSWER_WITHIN:?}"))
    });

    match status.code() {
        // The one UNIMPLEMENTED the gRPC spec asks for: a compression the server does not
        // take (finmatch takes none).
        Code::Unimplemented if gzip && status.message().contains("which isn't supported") => {}
        Code::Unknown | Code::Unimplemented => panic!("{path} as {role:?}: {status:?}"),
        Code::Internal => assert!(
            UNDECODABLE.iter().any(|m| status.message().starts_with(m)),
            "{path} as {role:?}: INTERNAL for a body tonic decoded: {status:?}"
        ),
        Code::InvalidArgument => {
            let bad = status.get_details_bad_request().unwrap_or_else(|| {
                panic!("{path} as {role:?}: INVALID_ARGUMENT without field violations: {status:?}")
            });
            assert!(!bad.field_violations.is_empty(), "{path}: {status:?}");
            for v in &bad.field_violations {
                assert!(
                    !v.field.is_empty() && !v.description.is_empty(),
                    "{path}: a violation without its field or description: {status:?}"
                );
                assert!(
                    names_a_field(h, &h.inputs[path.as_str()], &v.field),
                    "{path}: the violation's field {:?} is not a field of the request: {status:?}",
                    v.field
                );
            }
        }
        _ => {}
    }
});
