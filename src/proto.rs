//! The API's wire vocabulary, shared by the server's edge (`grpc`) and the command line's clients
//! (`client`, `import`, `bench`): the types generated from `proto/finmatch/v1` by build.rs, the
//! limits the proto states, and the canonical names of status codes.

mod generated {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("finmatch.v1");
}

pub use generated::*;

/// The compiled descriptors of every proto file, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("finmatch_descriptor");

/// Rejections an ImportNeedsResponse lists; the rest are only counted in `rejected_total`
/// (stated in the proto: keep them in step). Stored items are listed up to the same number.
pub const LISTED_REJECTIONS_MAX: usize = 1000;

/// The canonical upper-case name of a code, as grpc-go and the google.rpc.Code enum spell it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
