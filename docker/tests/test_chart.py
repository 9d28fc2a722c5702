"""The Helm chart (docker/helm/loaderd): lint, render with several value sets, validate every
manifest against the Kubernetes 1.30 schemas, check the parts that matter, and feed the
rendered loaderd.toml to the real daemon (`loaderd --config FILE --print-config`)."""

from __future__ import annotations

import base64
import pathlib
import re
import tomllib

import pytest

helm_python = pytest.importorskip("helm_python")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "docker" / "helm" / "loaderd"
NAMESPACE = "ml"  # the namespace the `render` fixture renders into
KUBE_VERSION = "1.30"
TOKEN = "peer-token-9f2c41d7e8"
GPU_NODES = {
    "nodeSelector": {"nvidia.com/gpu.present": "true"},
    "tolerations": [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoExecute"},
    ],
}
MOUNTS = [
    {"path": "/imagenet", "uri": "s3://my-bucket/imagenet", "options": {"region": "us-east-1"}},
    {"path": "/local", "uri": "file:///data"},
]

SCENARIOS: dict[str, dict] = {
    "defaults": {},
    "external-etcd": {"etcd": {"externalEndpoints": ["http://etcd-a.infra:2379", "http://etcd-b.infra:2379"]}},
    "fuse-disabled": {"fuse": {"enabled": False}},
    "gpu-nodes": GPU_NODES,
    "tiny-cache": {
        "config": {
            "cache": {"memory": {"capacity": 0}, "ssd": {"capacity": "64MiB"}},
            "pipeline": {"max_client_bytes": "64MiB", "max_total_bytes": "128MiB"},
        },
    },
    "huge-cache": {
        "config": {
            "cache": {"memory": {"capacity": "512GiB"}, "ssd": {"capacity": "8TiB"}},
            "pipeline": {"max_total_bytes": "64GiB"},
        },
    },
    "host-network": {"hostNetwork": True},
    "example": {"example": {"enabled": True}, "config": {"mount": MOUNTS}},
    "ssd-local-pv": {"ssd": {"volume": "localPV", "localPV": {"storageClassName": "topolvm"}}},
    "ssd-off": {"ssd": {"enabled": False}},
    "cluster-off": {"cluster": {"enabled": False}},
    "secrets": {
        "cluster": {"token": TOKEN},
        "s3": {"existingSecret": "s3-creds"},
        "config": {"mount": MOUNTS},
    },
}


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def container(workload: dict) -> dict:
    return pod_spec(workload)["containers"][0]


def volume(workload: dict, name: str) -> dict:
    return next(v for v in pod_spec(workload)["volumes"] if v["name"] == name)


def volume_mount(cont: dict, name: str) -> dict:
    return next(m for m in cont["volumeMounts"] if m["name"] == name)


def env_of(cont: dict) -> dict[str, dict]:
    return {e["name"]: e for e in cont.get("env", [])}


def daemonsets(r) -> list[dict]:
    return r.of_kind("DaemonSet")


def workers(r) -> list[dict]:
    """The worker DaemonSet, as a list (the daemon; the FUSE front holds no cache, joins no
    cluster and needs neither tokens nor credentials)."""
    return [r.get("DaemonSet", "-worker")]


def configs(r) -> dict[str, dict]:
    return {name: tomllib.loads(text) for name, text in r.configmap_data().items()}


# --- lint and schema ---------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["defaults", "example", "ssd-local-pv"])
def test_lint_strict(scenario):
    report = helm_python.lint(str(CHART_DIR), SCENARIOS[scenario], strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_manifest_is_valid_kubernetes(render, scenario):
    r = render(SCENARIOS[scenario])
    assert r.docs
    for doc in r.docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


# --- workloads ---------------------------------------------------------------------------------


def test_bundled_etcd_is_a_statefulset_with_persistent_volumes(render):
    r = render()
    sts = r.get("StatefulSet", "-etcd")
    assert sts["spec"]["replicas"] == 3
    headless = r.get("Service", "-etcd-headless")
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["clusterIP"] == "None"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"
    assert volume_mount(container(sts), claim["metadata"]["name"])["mountPath"] == "/var/lib/etcd"
    args = " ".join(container(sts)["args"])
    assert "ld-loaderd-etcd-2=http://ld-loaderd-etcd-2.ld-loaderd-etcd-headless.ml.svc:2380" in args
    assert r.get("PodDisruptionBudget", "-etcd")
    endpoints = env_of(container(r.get("DaemonSet", "-worker")))["LOADERD_ETCD_ENDPOINTS"]["value"]
    assert endpoints.split(",") == [
        f"http://ld-loaderd-etcd-{i}.ld-loaderd-etcd-headless.{NAMESPACE}.svc:2379" for i in range(3)
    ]
    assert configs(r)["loaderd.toml"]["cluster"]["etcd_endpoints"] == endpoints.split(",")


def test_external_etcd_renders_no_statefulset(render):
    values = SCENARIOS["external-etcd"]
    r = render(values)
    assert not r.of_kind("StatefulSet")
    assert not r.of_kind("PodDisruptionBudget")
    assert not [s for s in r.of_kind("Service") if "etcd" in s["metadata"]["name"]]
    want = values["etcd"]["externalEndpoints"]
    for ds in workers(r):
        assert env_of(container(ds))["LOADERD_ETCD_ENDPOINTS"]["value"] == ",".join(want)
    for cfg in configs(r).values():
        assert cfg["cluster"]["etcd_endpoints"] == want


def test_worker_and_fuse_daemonsets(render):
    r = render()
    worker, fuse = r.get("DaemonSet", "-worker"), r.get("DaemonSet", "-fuse")
    assert container(worker)["args"] == ["--config", "/etc/loaderd/loaderd.toml"]
    # The FUSE DaemonSet runs the thin front over the worker's socket, read from the hostPath
    # the worker's socket lives in; it reads the worker's config for [fuse].
    assert container(fuse)["args"] == [
        "fuse",
        "--config",
        "/etc/loaderd/loaderd.toml",
        "--socket",
        "/run/loaderd/loaderd.sock",
        "/mnt/loaderd/data",
    ]
    assert volume(fuse, "socket")["hostPath"]["path"] == volume(worker, "socket")["hostPath"]["path"]
    assert volume_mount(container(fuse), "socket")["mountPath"] == "/run/loaderd"
    # The worker runs as the image's non-root user; only the FUSE front is privileged.
    assert pod_spec(worker)["securityContext"]["runAsNonRoot"] is True
    assert not container(worker)["securityContext"].get("privileged")
    assert container(fuse)["securityContext"]["privileged"] is True
    # Bidirectional propagation on the mount point's parent, a directory of the node.
    host = volume_mount(container(fuse), "fuse-host")
    assert host["mountPropagation"] == "Bidirectional"
    assert host["mountPath"] == "/mnt/loaderd"
    assert volume(fuse, "fuse-host")["hostPath"]["path"] == "/mnt/loaderd"
    # Each node is one cluster member: the front has no cache, ports, tokens or node id.
    assert env_of(container(worker))["LOADERD_NODE_ID"]["value"] == "$(NODE_NAME)"
    assert "LOADERD_NODE_ID" not in env_of(container(fuse))
    assert "ports" not in container(fuse)
    assert not [v for v in pod_spec(fuse)["volumes"] if v["name"] in ("cluster-token", "ssd")]
    node_name = env_of(container(worker))["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert node_name == "spec.nodeName"
    cfg = configs(r)
    assert set(cfg) == {"loaderd.toml"}
    assert cfg["loaderd.toml"]["cluster"]["listen_addr"] == "0.0.0.0:29998"
    assert cfg["loaderd.toml"]["fuse"]["worker_wait"] == "1m"
    assert env_of(container(worker))["LOADERD_ADVERTISE_ADDR"]["value"] == "$(POD_IP):29998"
    # A front replaced by a rollout would remount the view: it rolls only when deleted.
    assert fuse["spec"]["updateStrategy"] == {"type": "OnDelete"}


def test_fuse_disabled(render):
    r = render(SCENARIOS["fuse-disabled"])
    assert [d["metadata"]["name"] for d in daemonsets(r)] == ["ld-loaderd-worker"]
    assert set(r.configmap_data()) == {"loaderd.toml"}


@pytest.mark.parametrize("scenario", ["defaults", "host-network"])
def test_probes_and_prometheus_annotations(render, scenario):
    r = render(SCENARIOS[scenario])
    cfg = configs(r)
    ds = r.get("DaemonSet", "-worker")
    cont = container(ds)
    port = next(p["containerPort"] for p in cont["ports"] if p["name"] == "metrics")
    assert cfg["loaderd.toml"]["server"]["metrics_addr"] == f"0.0.0.0:{port}"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert cont[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, probe
    ann = ds["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == str(port)
    assert ann["prometheus.io/path"] == "/metrics"
    assert "checksum/config" in ann
    # The front has no HTTP endpoint, and a probe through the mount would wait on a
    # restarting worker and get the front (and so the mount) killed.
    front = container(r.get("DaemonSet", "-fuse"))
    assert not {"startupProbe", "readinessProbe", "livenessProbe"} & set(front)


def test_host_network(render):
    r = render(SCENARIOS["host-network"])
    for ds in workers(r):
        spec = pod_spec(ds)
        assert spec["hostNetwork"] is True
        assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
        ip = env_of(container(ds))["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert ip == "status.hostIP"
    assert "hostNetwork" not in pod_spec(render().get("DaemonSet", "-worker"))


def test_gpu_node_selector_and_tolerations(render):
    r = render({**SCENARIOS["gpu-nodes"], "example": {"enabled": True}})
    workloads = daemonsets(r) + r.of_kind("Job")
    assert len(workloads) == 3
    for w in workloads:
        assert pod_spec(w)["nodeSelector"] == GPU_NODES["nodeSelector"]
        assert pod_spec(w)["tolerations"] == GPU_NODES["tolerations"]
    assert container(r.get("Job"))["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_dev_shm_is_a_memory_backed_empty_dir(render):
    for ds in workers(render()):
        shm = volume(ds, "dshm")["emptyDir"]
        assert shm == {"medium": "Memory", "sizeLimit": "256Mi"}
        assert volume_mount(container(ds), "dshm")["mountPath"] == "/dev/shm"


def test_socket_directory_is_shared_with_the_example_job(render):
    r = render(SCENARIOS["example"])
    worker, job = r.get("DaemonSet", "-worker"), r.get("Job", "-example")
    socket = configs(r)["loaderd.toml"]["server"]["socket"]
    assert socket == "/run/loaderd/loaderd.sock"
    assert volume(worker, "socket")["hostPath"]["path"] == "/run/loaderd"
    assert volume_mount(container(worker), "socket")["mountPath"] == "/run/loaderd"
    job_socket = next(v for v in pod_spec(job)["volumes"] if v["name"] == "loaderd-socket")
    assert job_socket["hostPath"]["path"] == "/run/loaderd"
    train = container(job)
    assert volume_mount(train, "loaderd-socket")["mountPath"] == "/run/loaderd"
    assert env_of(train)["LOADERD_SOCKET"]["value"] == socket
    # The socket is 0660: the job joins the daemon's group.
    assert pod_spec(job)["securityContext"]["supplementalGroups"] == [
        pod_spec(worker)["securityContext"]["runAsGroup"]
    ]
    # The FUSE view, seen from the host mount namespace.
    fuse_dir = volume(r.get("DaemonSet", "-fuse"), "fuse-host")["hostPath"]["path"]
    job_fuse = next(v for v in pod_spec(job)["volumes"] if v["name"] == "loaderd-fuse")
    assert job_fuse["hostPath"]["path"] == fuse_dir
    assert volume_mount(train, "loaderd-fuse")["mountPropagation"] == "HostToContainer"
    assert train["command"][-1].endswith("examples/train_resnet50.py")
    assert train["args"] == ["--dataset", "/imagenet", "--batch-size", "256"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert not render().of_kind("Job")


def test_ssd_on_host_path_or_local_pv(render):
    worker = render().get("DaemonSet", "-worker")
    assert volume(worker, "ssd")["hostPath"] == {"path": "/var/cache/loaderd", "type": "DirectoryOrCreate"}
    assert volume_mount(container(worker), "ssd")["subPath"] == "worker"

    r = render(SCENARIOS["ssd-local-pv"])
    for ds, capacity_mi in [(r.get("DaemonSet", "-worker"), 16 * 1024)]:
        claim = volume(ds, "ssd")["ephemeral"]["volumeClaimTemplate"]["spec"]
        assert claim["storageClassName"] == "topolvm"
        assert claim["resources"]["requests"]["storage"] == f"{-(-capacity_mi * 11 // 10)}Mi"
        assert "hostPath" not in volume(ds, "ssd")

    r = render(SCENARIOS["ssd-off"])
    for ds in daemonsets(r):
        assert not [v for v in pod_spec(ds)["volumes"] if v["name"] == "ssd"]
    assert "ssd" not in configs(r)["loaderd.toml"]["cache"]


def mebibytes(text: str) -> int:
    assert text.endswith("Mi"), text
    return int(text[:-2])


@pytest.mark.parametrize(
    "scenario, memory_mi, rings_mi",
    [
        ("defaults", 1024, 16 * 1024),
        ("tiny-cache", 0, 128),
        ("huge-cache", 512 * 1024, 64 * 1024),
    ],
)
def test_memory_is_sized_from_the_cache(render, scenario, memory_mi, rings_mi):
    """The memory tier and the batch rings are memfd shared memory, charged to the daemon's
    container: its memory request and limit follow the cache sizes."""
    r = render(SCENARIOS[scenario])
    fixed = 256 + 256  # in-flight fetches + metadata
    worker = container(r.get("DaemonSet", "-worker"))["resources"]
    assert mebibytes(worker["requests"]["memory"]) == memory_mi + fixed + 1024
    assert mebibytes(worker["limits"]["memory"]) == memory_mi + fixed + 1024 + rings_mi
    assert worker["requests"]["cpu"] == "2"
    # The front holds no cache: a small, fixed request whatever the cache's size.
    fuse = container(r.get("DaemonSet", "-fuse"))["resources"]
    assert fuse == {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}


def test_explicit_memory_resources_win(render):
    r = render({"worker": {"resources": {"requests": {"cpu": "8", "memory": "100Gi"}, "limits": {"memory": "200Gi"}}}})
    res = container(r.get("DaemonSet", "-worker"))["resources"]
    assert res == {"requests": {"cpu": "8", "memory": "100Gi"}, "limits": {"memory": "200Gi"}}


# --- secrets -----------------------------------------------------------------------------------


def test_cluster_token_only_in_a_secret(render):
    r = render(SCENARIOS["secrets"])
    secret = r.get("Secret", "-cluster-token")
    assert base64.b64decode(secret["data"]["token"]).decode() == TOKEN
    encoded = base64.b64encode(TOKEN.encode()).decode()
    for name, text in r.text.items():
        if not name.endswith("secret.yaml"):
            assert TOKEN not in text and encoded not in text, name
    for ds in workers(r):
        token_file = env_of(container(ds))["LOADERD_CLUSTER_TOKEN_FILE"]["value"]
        mounted = volume_mount(container(ds), "cluster-token")["mountPath"]
        assert token_file == f"{mounted}/token"
        assert volume(ds, "cluster-token")["secret"]["secretName"] == secret["metadata"]["name"]
    for cfg in configs(r).values():
        assert "token" not in cfg["cluster"] and "token_file" not in cfg["cluster"]


def test_cluster_token_from_an_existing_secret(render):
    r = render({"cluster": {"existingSecret": "peer-token", "existingSecretKey": "shared"}})
    assert not r.of_kind("Secret")
    for ds in workers(r):
        assert volume(ds, "cluster-token")["secret"]["secretName"] == "peer-token"
        assert env_of(container(ds))["LOADERD_CLUSTER_TOKEN_FILE"]["value"].endswith("/shared")


def test_generated_token_when_none_is_given(render):
    secret = render().get("Secret", "-cluster-token")
    assert len(base64.b64decode(secret["data"]["token"])) == 48


def test_s3_credentials_come_from_an_existing_secret(render):
    r = render(SCENARIOS["secrets"])
    assert "AWS_ACCESS_KEY_ID" not in env_of(container(r.get("DaemonSet", "-fuse")))
    for ds in workers(r):
        env = env_of(container(ds))
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds", "key": name}
    assert "AWS_ACCESS_KEY_ID" not in env_of(container(render().get("DaemonSet", "-worker")))


def test_credentials_in_mount_options_are_refused(chart):
    values = {"config": {"mount": [{"path": "/x", "uri": "s3://b/x", "options": {"secret_access_key": "k"}}]}}
    with pytest.raises(helm_python.HelmError, match="s3.existingSecret"):
        chart.render(values=values, name="ld", namespace=NAMESPACE)


def test_bad_sizes_are_refused(chart):
    with pytest.raises(helm_python.HelmError, match="not a size"):
        chart.render(values={"config": {"cache": {"memory": {"capacity": "lots"}}}}, name="ld")


# --- the rendered config through the daemon ----------------------------------------------------


def keys_of(table: dict, prefix: str = "") -> set[str]:
    """Dotted keys of a TOML document; an array of tables is `name` and `name[].key`."""
    keys = set()
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            keys |= keys_of(v, f"{key}.") or {key}
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            keys.add(key)
            for item in v:
                keys |= keys_of(item, f"{key}[].")
        else:
            keys.add(key)
    return keys


def pod_env(cont: dict, token_file: str) -> dict[str, str]:
    """The daemon container's environment as the kubelet would give it on a node."""
    downward = {"spec.nodeName": "node-a", "status.podIP": "10.0.0.7", "status.hostIP": "192.168.0.7"}
    env: dict[str, str] = {}
    for e in cont.get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
        elif "fieldRef" in e["valueFrom"]:
            env[e["name"]] = downward[e["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[e["name"]] = "from-a-secret"
    if "LOADERD_CLUSTER_TOKEN_FILE" in env:
        env["LOADERD_CLUSTER_TOKEN_FILE"] = token_file
    return env


def print_config(run_loaderd, tmp_path, text: str, cont: dict) -> dict:
    """`loaderd --config FILE --print-config` with the pod's environment; returns its TOML."""
    token = tmp_path / "token"
    token.write_text(TOKEN)
    env = pod_env(cont, str(token))
    path = tmp_path / "loaderd.toml"
    path.write_text(text)
    done = run_loaderd(["--config", str(path), "--print-config"], env)
    assert done.returncode == 0, f"{done.stderr}\n--- {path}:\n{text}"
    return tomllib.loads(done.stdout)


# Keys a pod gets from its environment or flags, not from the ConfigMap.
PER_NODE = {"cluster.node_id", "cluster.advertise_addr", "cluster.token", "cluster.token_file", "fuse.mount_point"}


@pytest.fixture(scope="module")
def daemon_keys(run_loaderd) -> set[str]:
    """Every key the daemon has: its defaults plus the optional keys of the example config."""
    default = run_loaderd(["--print-config"])
    assert default.returncode == 0, default.stderr
    example = REPO / "docs" / "loaderd.example.toml"
    full = run_loaderd(["--config", str(example), "--print-config"])
    assert full.returncode == 0, full.stderr
    return keys_of(tomllib.loads(default.stdout)) | keys_of(tomllib.loads(full.stdout))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_config_round_trips_through_the_daemon(render, run_loaderd, daemon_keys, tmp_path, scenario):
    r = render(SCENARIOS[scenario])
    data = r.configmap_data()
    for name, ds in [("loaderd.toml", r.get("DaemonSet", "-worker"))]:
        if ds is None:
            continue
        rendered = tomllib.loads(data[name])
        printed = print_config(run_loaderd, tmp_path, data[name], container(ds))
        # Every key the daemon prints by default is written by the chart, so the values cover
        # every knob.
        default_keys = keys_of(tomllib.loads(run_loaderd(["--print-config"]).stdout))
        missing = default_keys - keys_of(rendered)
        assert not missing, f"{name} lacks {sorted(missing)}"
        # So is every optional key, when its feature is on, except the per-node ones.
        optional = daemon_keys - default_keys - PER_NODE
        expect = {k for k in optional if not k.startswith("mount[]") or rendered.get("mount")}
        expect = {k for k in expect if not k.startswith("mount[].options.")}  # data, not keys
        if "ssd" not in rendered["cache"]:
            expect = {k for k in expect if not k.startswith("cache.ssd.")}
        # tcp_addr, socket_group, shm_socket and cluster members are off unless set.
        expect -= {"server.tcp_addr", "server.socket_group", "server.shm_socket"}
        expect -= {"server.tcp_token_file", "server.tcp_admin_token_file", "server.admin_group"}
        if SCENARIOS[scenario].get("cluster", {}).get("enabled") is False:
            expect -= {"cluster.listen_addr"}
        missing = expect - keys_of(rendered)
        assert not missing, f"{name} lacks {sorted(missing)}"
        # What the daemon runs with is what the chart wrote.
        for key in ("server", "pipeline", "fuse"):
            for k, v in rendered[key].items():
                assert str(printed[key][k]) == str(v) or k.endswith(("_bytes", "_leased", "max_read")), (key, k)
        assert printed["cache"]["memory"]["capacity"] == rendered["cache"]["memory"]["capacity"] or (
            rendered["cache"]["memory"]["capacity"] == 0
        )
        assert printed["cluster"]["etcd_endpoints"] == rendered["cluster"]["etcd_endpoints"]
        assert [m["path"] for m in printed["mount"]] == [m["path"] for m in rendered.get("mount", [])]


def test_value_changes_reach_the_daemon(render, run_loaderd, tmp_path):
    values = {
        "config": {
            "server": {"readahead_blocks": 9, "log_level": "debug", "tcp_addr": "127.0.0.1:7070",
                       "tcp_token_file": "/etc/loaderd/tcp-token"},
            "cache": {
                "block_size": "8MiB",
                "memory": {"capacity": "3GiB", "watermarks": {"high": 1, "low": 0.5}},
                "metadata": {"ttl": "1h", "manifest": False},
                "ufs": {"retries": 7, "max_inflight_bytes": 1073741824},
            },
            "fuse": {"threads": 64, "keep_cache": False},
            "pipeline": {"depth": 8, "on_error": "fail", "max_pixels": 100000000},
            "cluster": {"replication": 2, "lease_ttl": "30s", "etcd_prefix": "/team-a/"},
            "mount": MOUNTS,
        }
    }
    r = render(values)
    worker = r.get("DaemonSet", "-worker")
    printed = print_config(run_loaderd, tmp_path, r.configmap_data()["loaderd.toml"], container(worker))
    assert printed["server"]["readahead_blocks"] == 9
    assert printed["server"]["log_level"] == "debug"
    assert printed["server"]["tcp_addr"] == "127.0.0.1:7070"
    assert printed["cache"]["block_size"] == "8MiB"
    assert printed["cache"]["memory"]["capacity"] == "3GiB"
    assert printed["cache"]["memory"]["watermarks"] == {"high": 1.0, "low": 0.5}
    assert printed["cache"]["metadata"] == {"ttl": "1h", "max_bytes": "256MiB", "manifest": False}
    assert printed["cache"]["ufs"]["retries"] == 7
    assert printed["cache"]["ufs"]["max_inflight_bytes"] == "1GiB"
    assert printed["fuse"]["threads"] == 64 and printed["fuse"]["keep_cache"] is False
    assert printed["pipeline"]["depth"] == 8 and printed["pipeline"]["on_error"] == "fail"
    assert printed["pipeline"]["max_pixels"] == 100000000
    assert printed["cluster"]["replication"] == 2
    assert printed["cluster"]["lease_ttl"] == "30s"
    assert printed["cluster"]["etcd_prefix"] == "/team-a/"
    assert printed["mount"] == [
        {"path": "/imagenet", "uri": "s3://my-bucket/imagenet", "options": {"region": "us-east-1"}},
        {"path": "/local", "uri": "file:///data", "options": {}},
    ]
    # The worker's memory limit follows the bigger tier and in-flight budget.
    limits = container(worker)["resources"]["limits"]["memory"]
    assert mebibytes(limits) == 3 * 1024 + 1024 + 256 + 1024 + 16 * 1024


def test_every_value_is_documented(chart):
    """docs/KUBERNETES.md names every value of values.yaml."""
    doc = (REPO / "docs" / "KUBERNETES.md").read_text()
    opaque = {"resources", "updateStrategy", "podAnnotations", "podLabels", "nodeSelector", "affinity", "watermarks"}

    def leaves(values: dict, prefix: str = ""):
        for k, v in values.items():
            if isinstance(v, dict) and v and k not in opaque:
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    undocumented = [p for p in leaves(chart.values) if not re.search(rf"\b{re.escape(p.rsplit('.', 1)[-1])}\b", doc)]
    assert not undocumented, undocumented
