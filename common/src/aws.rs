//! The AWS SDK set-up every AWS client of both binaries shares (SQS and Secrets Manager in the controller, Secrets
//! Manager in the agent): rustls on ring (the workspace's only crypto provider), the default chain for region and
//! credentials (`AWS_ENDPOINT_URL*` included), an optional endpoint. Behind the `aws` feature.

use aws_config::BehaviorVersion;

/// The AWS config loader over rustls with ring, with the endpoint override (tests and benchmarks build their
/// local-SQS clients on it too).
pub fn loader(endpoint: Option<&str>) -> aws_config::ConfigLoader {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    let http = aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https();
    let loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
    match endpoint {
        Some(endpoint) => loader.endpoint_url(endpoint),
        None => loader,
    }
}
