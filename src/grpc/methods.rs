//! The methods this server serves, read once from the compiled-in descriptor sets: which stream
//! (the call timeout lets them through) and what each is called in metrics. A path that names no
//! served method (a typo, a scanner, a made-up method under a real service) is not a method, and
//! shares the one label `other`, so no client can grow the metric series.

use std::collections::HashMap;
use std::sync::OnceLock;

use prost::Message as _;

use crate::proto as pb;

/// The descriptor sets of every service on the port: finmatch, health and both reflection
/// versions.
pub const DESCRIPTOR_SETS: [&[u8]; 4] = [
    pb::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

/// The label of every path that is not a served method.
pub const OTHER: &str = "other";

/// A served method.
#[derive(Debug)]
struct Method {
    /// `package.Service/Method`: the path without its leading slash.
    label: String,
    /// A client, server or bidirectional stream.
    streaming: bool,
}

/// Served methods by path (`/package.Service/Method`).
#[derive(Debug)]
pub struct Methods(HashMap<String, Method>);

impl Methods {
    fn read(descriptor_sets: &[&[u8]]) -> Result<Self, prost::DecodeError> {
        let mut methods = HashMap::new();
        for bytes in descriptor_sets {
            let set = prost_types::FileDescriptorSet::decode(*bytes)?;
            for file in set.file {
                let package = file.package();
                for service in &file.service {
                    for method in &service.method {
                        let label = format!("{package}.{}/{}", service.name(), method.name());
                        let streaming = method.client_streaming() || method.server_streaming();
                        methods.insert(format!("/{label}"), Method { label, streaming });
                    }
                }
            }
        }
        Ok(Self(methods))
    }

    /// Whether `path` is a served method that streams.
    pub fn is_streaming(&self, path: &str) -> bool {
        self.0.get(path).is_some_and(|m| m.streaming)
    }

    /// The metric label of a call to `path`: its method, or [`OTHER`].
    pub fn label(&'static self, path: &str) -> &'static str {
        self.0.get(path).map_or(OTHER, |m| m.label.as_str())
    }

    /// Every served path, `/package.Service/Method`.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// How many methods are served.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The methods of [`DESCRIPTOR_SETS`], read on first use.
pub fn served() -> &'static Methods {
    static SERVED: OnceLock<Methods> = OnceLock::new();
    SERVED.get_or_init(|| {
        // The sets are compiled into the binary by prost and tonic; one that does not decode is a
        // broken build, which the unit test below catches.
        Methods::read(&DESCRIPTOR_SETS).expect("the compiled-in descriptor sets decode")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_methods_are_read_from_the_descriptors() {
        let methods = served();
        assert!(methods.is_streaming("/finmatch.v1.FinancingService/ImportNeeds"));
        assert!(methods.is_streaming("/finmatch.v1.PartnerService/WatchReferrals"));
        assert!(methods.is_streaming("/grpc.health.v1.Health/Watch"));
        assert!(methods.is_streaming("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"));
        assert!(!methods.is_streaming("/finmatch.v1.FinancingService/SubmitNeed"));
        assert!(!methods.is_streaming("/grpc.health.v1.Health/Check"));
        assert!(!methods.is_streaming("/no.such.Service/Method"));
    }

    #[test]
    fn only_served_methods_have_labels_of_their_own() {
        let methods = served();
        assert_eq!(
            methods.label("/finmatch.v1.EnterpriseService/GetEnterprise"),
            "finmatch.v1.EnterpriseService/GetEnterprise"
        );
        assert_eq!(
            methods.label("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health/Check"
        );
        for path in [
            "/finmatch.v1.EnterpriseService/NoSuchMethod",
            "/finmatch.v1.NoSuchService/GetEnterprise",
            "/finmatch.v1.EnterpriseService/GetEnterprise/",
            "/random/path",
            "",
        ] {
            assert_eq!(methods.label(path), OTHER, "{path}");
        }
        // Every finmatch service is there, with health and reflection.
        let finmatch = methods
            .0
            .keys()
            .filter(|p| p.starts_with("/finmatch.v1."))
            .count();
        assert!(finmatch >= 30, "{finmatch} finmatch methods");
        assert!(methods.len() >= finmatch + 4);
    }
}
