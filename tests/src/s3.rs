//! A real S3 server for the tests: moto, started by `scripts/s3_sandbox.py`, with objects
//! uploaded at start and changed through boto3.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{repo_root, spawn_logged, terminate, wait_ready};

/// A moto S3 server with one bucket, started by `scripts/s3_sandbox.py`.
pub struct S3Sandbox {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The bucket holding the uploads.
    pub bucket: String,
    /// Always `us-east-1`.
    pub region: String,
    /// Access key the server was set up with (moto accepts any).
    pub access_key_id: String,
    /// Secret key the server was set up with (moto accepts any).
    pub secret_access_key: String,
    /// Number of objects uploaded at start.
    pub objects: usize,
    /// TCP port of the server; kept across `restart`.
    pub port: u16,
    uploads: Vec<(PathBuf, String)>,
    dir: TempDir,
    child: Option<Child>,
}

/// The bucket every sandbox creates.
pub const BUCKET: &str = "datasets";

impl S3Sandbox {
    /// Starts a server on a free port and uploads each `(local_dir, prefix)`
    /// (every file under `local_dir` becomes `prefix/relative/path`).
    pub fn start(upload: &[(&Path, &str)]) -> S3Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        let uploads = upload
            .iter()
            .map(|(p, prefix)| (p.to_path_buf(), prefix.to_string()))
            .collect();
        let mut sandbox = S3Sandbox {
            endpoint: String::new(),
            bucket: BUCKET.to_string(),
            region: String::new(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            objects: 0,
            port: 0,
            uploads,
            dir,
            child: None,
        };
        sandbox.spawn(0);
        sandbox
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("s3.log")
    }

    /// Contents of the server's log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self, port: u16) {
        let ready = self.dir.path().join("ready.json");
        let _ = fs::remove_file(&ready);
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
        let mut cmd = Command::new(python);
        cmd.arg(repo_root().join("scripts/s3_sandbox.py"))
            .args([
                "--port",
                &port.to_string(),
                "--bucket",
                &self.bucket,
                "--ready-file",
            ])
            .arg(&ready);
        for (local, prefix) in &self.uploads {
            cmd.arg("--upload")
                .arg(format!("{}:{prefix}", local.display()));
        }
        let mut child = spawn_logged(&mut cmd, &self.log_path());
        let ready = wait_ready(
            &mut child,
            || fs::read_to_string(&ready).ok(),
            "s3 sandbox",
            || format!("log:\n{}", self.log()),
        );
        let info: serde_json::Value = match ready {
            Ok(text) => serde_json::from_str(&text).expect("ready file is JSON"),
            Err(status) => panic!("s3 sandbox exited early ({status}):\n{}", self.log()),
        };
        let field = |name: &str| {
            info[name]
                .as_str()
                .unwrap_or_else(|| panic!("ready file lacks {name}"))
                .to_string()
        };
        self.endpoint = field("endpoint");
        self.region = field("region");
        self.access_key_id = field("access_key_id");
        self.secret_access_key = field("secret_access_key");
        self.objects = info["objects"].as_u64().expect("objects") as usize;
        self.port = self
            .endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("endpoint port");
        self.child = Some(child);
    }

    /// Stops the server (SIGTERM, then kill); its data is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }

    /// Stops the server if running and starts a fresh one on the same port with
    /// the same uploads: the "UFS went down and came back" case.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        // The port may linger for a moment after the old process exits.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpListener::bind(("127.0.0.1", port)).is_err() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
        self.spawn(port);
    }

    /// `s3://BUCKET/PREFIX` (`s3://BUCKET` for an empty prefix).
    pub fn uri(&self, prefix: &str) -> String {
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{prefix}", self.bucket)
        }
    }

    /// S3 options for a mount of this server, with the given secret key.
    pub fn options_with_secret(&self, secret: &str) -> Vec<(String, String)> {
        vec![
            ("endpoint".into(), self.endpoint.clone()),
            ("region".into(), self.region.clone()),
            ("access_key_id".into(), self.access_key_id.clone()),
            ("secret_access_key".into(), secret.to_string()),
            ("allow_http".into(), "true".into()),
        ]
    }

    /// S3 options for a mount of this server.
    pub fn options(&self) -> Vec<(String, String)> {
        self.options_with_secret(&self.secret_access_key)
    }

    /// `loaderd` arguments mounting `s3://BUCKET/prefix` at `point`.
    pub fn mount_args(&self, point: &str, prefix: &str) -> Vec<String> {
        self.mount_args_with_secret(point, prefix, &self.secret_access_key)
    }

    /// Like `mount_args`, with a chosen secret key (moto accepts any).
    pub fn mount_args_with_secret(&self, point: &str, prefix: &str, secret: &str) -> Vec<String> {
        let mut args = vec![
            "--mount".to_string(),
            format!("{point}={}", self.uri(prefix)),
        ];
        for (key, value) in self.options_with_secret(secret) {
            args.push("--mount-option".into());
            args.push(format!("{point}:{key}={value}"));
        }
        args
    }

    /// Writes (or overwrites) object `key` with `data`, through boto3.
    pub fn put_object(&self, key: &str, data: &[u8]) {
        let src = self.dir.path().join("put_object.bin");
        fs::write(&src, data).expect("write object source");
        self.boto3("put", key, &src);
    }

    /// Deletes object `key`, through boto3.
    pub fn delete_object(&self, key: &str) {
        self.boto3("delete", key, Path::new(""));
    }

    fn boto3(&self, op: &str, key: &str, src: &Path) {
        let script = "import sys, boto3\n\
            endpoint, region, bucket, op, key, src = sys.argv[1:]\n\
            c = boto3.client('s3', endpoint_url=endpoint, region_name=region,\n\
                aws_access_key_id='testing', aws_secret_access_key='testing')\n\
            if op == 'put':\n\
            \x20   c.upload_file(src, bucket, key)\n\
            else:\n\
            \x20   c.delete_object(Bucket=bucket, Key=key)\n";
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
        let out = Command::new(python)
            .args([
                "-c",
                script,
                &self.endpoint,
                &self.region,
                &self.bucket,
                op,
                key,
            ])
            .arg(src)
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "{op} object {key} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for S3Sandbox {
    fn drop(&mut self) {
        self.stop();
    }
}
