//! TLS to PostgreSQL as libpq users write it (`sslmode`, `sslrootcert` in the URL), against a
//! real server: a cluster of these tests' own with `ssl = on` and a certificate for `localhost`
//! signed by a CA made here (rcgen), started by the first test that needs it, shared by the
//! others and stopped by pid when the test binary exits (see `pg_cluster`). The server without
//! TLS is the run's usual cluster.

use std::path::PathBuf;
use std::sync::OnceLock;

use chrono::TimeDelta;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use recap::event::{Event, Severity, StreamName, Timestamp, parse_timestamp};
use recap::store::{PgStore, RecordQuery, StoreError, StoreOptions};

use crate::pg_cluster::{self, Cluster, Setup};

/// The TLS cluster and the CA files a test points `sslrootcert` at.
struct TlsCluster {
    cluster: Cluster,
    /// The CA that signed the server's certificate.
    ca: PathBuf,
    /// A CA that signed nothing the server has.
    other_ca: PathBuf,
}

static TLS_CLUSTER: OnceLock<Result<TlsCluster, String>> = OnceLock::new();

fn tls_cluster(test: &str) -> Option<&'static TlsCluster> {
    pg_cluster::available(TLS_CLUSTER.get_or_init(start).as_ref(), test)
}

fn start() -> Result<TlsCluster, String> {
    let ca = certificate_authority("recap test CA");
    let other_ca = certificate_authority("some other CA");
    let server_key = KeyPair::generate().map_err(|e| e.to_string())?;
    // Made for `localhost` only, so that connecting to 127.0.0.1 is a host name mismatch.
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned()]).map_err(|e| e.to_string())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = params
        .signed_by(&server_key, &ca)
        .map_err(|e| e.to_string())?;
    let cluster = pg_cluster::start_with(&Setup {
        files: vec![
            ("server.crt", server_cert.pem()),
            ("server.key", server_key.serialize_pem()),
        ],
        settings: vec!["ssl=on"],
    })?;
    let write = |name: &str, pem: String| {
        let path = cluster.dir().join(name);
        std::fs::write(&path, pem)
            .map(|()| path)
            .map_err(|e| format!("cannot write {name}: {e}"))
    };
    Ok(TlsCluster {
        ca: write("ca.pem", ca.pem())?,
        other_ca: write("other-ca.pem", other_ca.pem())?,
        cluster,
    })
}

fn certificate_authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A fresh database on the TLS cluster: its URL through `host`, with `params`.
fn database(cluster: &TlsCluster, test: &str, host: &str, params: &str) -> String {
    let url = cluster.cluster.create_database(test);
    with_params(&url.replacen("127.0.0.1", host, 1), params)
}

fn with_params(url: &str, params: &str) -> String {
    if params.is_empty() {
        url.to_owned()
    } else {
        format!("{url}?{params}")
    }
}

fn ts(seconds: i64) -> Timestamp {
    parse_timestamp("2024-05-01T10:00:00Z").unwrap() + TimeDelta::seconds(seconds)
}

async fn open(url: &str) -> Result<PgStore, StoreError> {
    PgStore::open(url, StoreOptions::default()).await
}

fn open_error(result: Result<PgStore, StoreError>) -> String {
    match result {
        Ok(_) => panic!("the store opened"),
        Err(error) => error.to_string(),
    }
}

/// Appends an event through `store` and reads it back.
async fn round_trip(store: &PgStore) {
    let stream = StreamName::new("tls").unwrap();
    let event = Event::new("tool", Severity::Info, "over TLS".to_owned()).unwrap();
    let appended = store.append(&stream, vec![event], ts(0)).await.unwrap();
    assert_eq!(appended.len(), 1);
    let page = store
        .records(&stream, &RecordQuery::default())
        .await
        .unwrap();
    let messages: Vec<&str> = page.records.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(messages, ["over TLS"]);
}

/// Whether each of the store's connections to `url`'s database (application `recap`) is
/// encrypted, as the server sees them, asked over a connection of the test's own.
async fn encrypted_connections(url: &str) -> Vec<bool> {
    let (rest, _) = url.split_once('?').unwrap_or((url, ""));
    let database = rest.rsplit('/').next().unwrap().to_owned();
    let plain = format!(
        "{}?sslmode=disable",
        rest.replacen("localhost", "127.0.0.1", 1)
    );
    let (client, connection) = tokio_postgres::connect(&plain, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'recap' AND a.datname = $1",
            &[&database],
        )
        .await
        .unwrap();
    drop(client);
    let _ = driver.await;
    rows.iter().map(|row| row.get(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_servers_ca_round_trips_encrypted() {
    let Some(cluster) = tls_cluster("verify_full") else {
        return;
    };
    let url = database(
        cluster,
        "verify_full",
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", cluster.ca.display()),
    );
    let store = open(&url).await.unwrap();
    round_trip(&store).await;
    let encrypted = encrypted_connections(&url).await;
    assert!(!encrypted.is_empty());
    assert!(encrypted.iter().all(|&ssl| ssl), "{encrypted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_a_host_name_the_certificate_lacks_fails_and_verify_ca_connects() {
    let Some(cluster) = tls_cluster("wrong_host") else {
        return;
    };
    let ca = cluster.ca.display();
    // The certificate is for `localhost`; 127.0.0.1 is the same server under another name.
    let url = database(
        cluster,
        "wrong_host",
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let error = open_error(open(&url).await);
    assert!(
        error.contains("TLS certificate of the database server")
            && error.contains("not valid for name \"127.0.0.1\"")
            && error.contains("sslmode=verify-ca"),
        "{error}"
    );
    // verify-ca checks the CA alone.
    let url = url.replace("sslmode=verify-full", "sslmode=verify-ca");
    round_trip(&open(&url).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_an_untrusted_ca_fails_naming_the_reason() {
    let Some(cluster) = tls_cluster("other_ca") else {
        return;
    };
    for mode in ["verify-full", "verify-ca", "require"] {
        // `require` with a root file verifies the chain, as libpq does.
        let url = database(
            cluster,
            "other_ca",
            "localhost",
            &format!("sslmode={mode}&sslrootcert={}", cluster.other_ca.display()),
        );
        let error = open_error(open(&url).await);
        assert!(
            error.contains(&format!("did not verify (sslmode={mode})"))
                && error.contains("not signed by a trusted CA")
                && error.contains(&format!(
                    "sslrootcert={} does not hold the CA",
                    cluster.other_ca.display()
                )),
            "{mode}: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_and_prefer_encrypt_without_verifying_and_disable_does_not_encrypt() {
    let Some(cluster) = tls_cluster("unverified") else {
        return;
    };
    // No sslrootcert: the test CA is in no trust store, and neither mode asks for one.
    for (params, encrypted) in [
        ("sslmode=require", true),
        ("", true),
        ("sslmode=disable", false),
    ] {
        let url = database(cluster, "unverified", "127.0.0.1", params);
        let store = open(&url).await.unwrap();
        round_trip(&store).await;
        let seen = encrypted_connections(&url).await;
        assert!(!seen.is_empty());
        assert!(
            seen.iter().all(|&ssl| ssl == encrypted),
            "{params:?}: {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_against_a_server_without_tls_says_so_and_disable_connects() {
    let Some(url) = pg_cluster::database("no_tls") else {
        return;
    };
    let error = open_error(open(&with_params(&url, "sslmode=require")).await);
    assert!(
        error.contains("does not accept TLS connections")
            && error.contains("sslmode=require requires TLS")
            && error.contains("ssl = on"),
        "{error}"
    );
    round_trip(&open(&with_params(&url, "sslmode=disable")).await.unwrap()).await;
}
