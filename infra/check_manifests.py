#!/usr/bin/env python3
"""Offline consistency checks of the deployment files (run by infra/check.sh).

Parses every YAML/JSON file, and checks what a parse alone does not: that every path the compose file and the
Dockerfiles reference exists (and is not excluded by .dockerignore), that the restore step copies every
project the published projects reference, that names agree across files (ports, labels, secrets, queue,
datasource uid, mounts), that the dashboard's PromQL parses, and that the Kubernetes manifests keep the
security settings. Needs PyYAML (Debian: python3-yaml). Exit status 0 when every check passes.

    python3 infra/check_manifests.py [--repo DIR] [--promtool PATH] [--kubectl PATH]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

try:
    import yaml
except ImportError:  # pragma: no cover - reported to the user
    sys.stderr.write("check_manifests.py needs PyYAML: apt-get install -y python3-yaml (or pip install pyyaml)\n")
    sys.exit(2)

QUEUE = "eraser-unlearning-requested"
HTTP_PORT = 8080
APP_UID = 1654
PUBLISHED_PROJECTS = ["src/EraserWorker/EraserWorker.csproj", "src/EraserWorker.Cli/EraserWorker.Cli.csproj"]
DOCKERFILES = ["docker/Dockerfile", "docker/Dockerfile.cuda"]


class Checker:
    def __init__(self, repo: Path, promtool: str | None, kubectl: str | None):
        self.repo = repo
        self.promtool = promtool
        self.kubectl = kubectl
        self.results: list[tuple[str, str, list[str]]] = []

    # -- plumbing ------------------------------------------------------------------------------------------
    def run(self, name: str, fn) -> None:
        errors: list[str] = []
        try:
            status = fn(errors)
        except Exception as exc:  # a crash is a failure of that check, not of the script
            errors.append(f"{type(exc).__name__}: {exc}")
            status = None
        if errors:
            self.results.append(("FAIL", name, errors))
        elif status == "skip":
            self.results.append(("SKIP", name, []))
        else:
            self.results.append(("ok", name, []))

    def path(self, rel: str) -> Path:
        return self.repo / rel

    def load_yaml_all(self, rel: str) -> list:
        with open(self.path(rel), encoding="utf-8") as f:
            return [d for d in yaml.safe_load_all(f) if d is not None]

    def load_yaml(self, rel: str):
        docs = self.load_yaml_all(rel)
        if len(docs) != 1:
            raise ValueError(f"{rel}: expected one YAML document, found {len(docs)}")
        return docs[0]

    # -- parsing ---------------------------------------------------------------------------------------------
    def yaml_files(self) -> list[str]:
        files = ["docker-compose.yml"]
        for base in ["infra"]:
            for p in sorted(self.path(base).rglob("*")):
                if p.suffix in (".yml", ".yaml") and p.is_file():
                    files.append(str(p.relative_to(self.repo)))
        return files

    def check_parse(self, errors: list[str]):
        for rel in self.yaml_files():
            try:
                docs = self.load_yaml_all(rel)
                if not docs:
                    errors.append(f"{rel}: empty")
            except yaml.YAMLError as exc:
                errors.append(f"{rel}: {exc}")
        for p in sorted(self.path("infra/grafana/dashboards").glob("*.json")):
            try:
                json.loads(p.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                errors.append(f"{p.relative_to(self.repo)}: {exc}")

    # -- .dockerignore ----------------------------------------------------------------------------------------
    def dockerignore_patterns(self) -> list[tuple[bool, str]]:
        patterns = []
        f = self.path(".dockerignore")
        if not f.exists():
            return patterns
        for line in f.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pat = line[1:] if negate else line
            patterns.append((negate, pat.strip("/")))
        return patterns

    @staticmethod
    def _match(pattern: str, rel: str) -> bool:
        # Docker's matcher: path.Match per segment, "**" any number of segments; a pattern matching a
        # directory excludes what is below it.
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        return re.fullmatch(regex + "(?:/.*)?", rel) is not None

    def ignored(self, rel: str) -> bool:
        result = False
        for negate, pat in self.dockerignore_patterns():
            if self._match(pat, rel):
                result = not negate
        return result

    def check_dockerignore(self, errors: list[str]):
        f = self.path(".dockerignore")
        if not f.exists():
            errors.append(".dockerignore is missing")
            return
        for must in ["src/EraserWorker/bin/Release/x.dll", "src/EraserWorker/obj/project.assets.json", ".git/HEAD",
                     ".run/x", ".tools/x", "node_modules/x", "src/a/node_modules/b"]:
            if not self.ignored(must):
                errors.append(f".dockerignore does not exclude {must}")
        for keep in ["src/EraserWorker/EraserWorker.csproj", "Directory.Build.props", "build/LibStdCxxCompat.targets",
                     "docker/healthcheck.sh", "global.json", ".editorconfig"]:
            if self.ignored(keep):
                errors.append(f".dockerignore excludes {keep}, which the Dockerfiles need")

    # -- Dockerfiles --------------------------------------------------------------------------------------
    @staticmethod
    def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
        instructions, buf = [], ""
        for raw in text.splitlines():
            line = raw.rstrip()
            if not buf and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if buf and line.lstrip().startswith("#"):
                continue  # comment lines inside a continuation are dropped by Docker
            if line.endswith("\\"):
                buf += line[:-1] + " "
                continue
            buf += line
            parts = buf.strip().split(None, 1)
            instructions.append((parts[0].upper(), parts[1] if len(parts) > 1 else ""))
            buf = ""
        return instructions

    def project_closure(self) -> set[str]:
        seen: set[str] = set()
        todo = list(PUBLISHED_PROJECTS)
        while todo:
            rel = os.path.normpath(todo.pop())
            if rel in seen:
                continue
            seen.add(rel)
            proj = self.path(rel)
            if not proj.exists():
                continue
            for ref in ET.parse(proj).getroot().iter("ProjectReference"):
                inc = ref.get("Include", "").replace("\\", "/")
                todo.append(os.path.normpath(os.path.join(os.path.dirname(rel), inc)))
        return seen

    def check_dockerfiles(self, errors: list[str]):
        closure = self.project_closure()
        for rel in PUBLISHED_PROJECTS:
            if not self.path(rel).exists():
                errors.append(f"{rel} (published by the Dockerfiles) does not exist")
        for df in DOCKERFILES:
            if not self.path(df).exists():
                errors.append(f"{df} is missing")
                continue
            ins = self.dockerfile_instructions(self.path(df).read_text(encoding="utf-8"))
            copied_before_restore: set[str] = set()
            restore_seen = False
            stages = 0
            for kw, args in ins:
                if kw == "FROM":
                    stages += 1
                if kw in ("COPY", "ADD"):
                    tokens = args.split()
                    flags = [t for t in tokens if t.startswith("--")]
                    paths = [t for t in tokens if not t.startswith("--")]
                    if any(f.startswith("--from=") for f in flags):
                        continue
                    if paths and paths[0].startswith("["):
                        errors.append(f"{df}: JSON-form {kw} not supported by this check: {args}")
                        continue
                    for src in paths[:-1]:
                        s = src.rstrip("/")
                        if not self.path(s).exists():
                            errors.append(f"{df}: {kw} source {src} does not exist")
                        elif self.ignored(s):
                            errors.append(f"{df}: {kw} source {src} is excluded by .dockerignore")
                        if not restore_seen:
                            copied_before_restore.add(os.path.normpath(s))
                if kw == "RUN" and "dotnet restore" in args:
                    restore_seen = True
                    if df.endswith(".cuda") and "-p:TorchBackend=cuda" not in args:
                        errors.append(f"{df}: the restore must pass -p:TorchBackend=cuda")
                if kw == "RUN" and "dotnet publish" in args:
                    for proj in PUBLISHED_PROJECTS:
                        if proj not in args:
                            errors.append(f"{df}: does not publish {proj}")
                    if df.endswith(".cuda") and args.count("-p:TorchBackend=cuda") < 2:
                        errors.append(f"{df}: every publish must pass -p:TorchBackend=cuda")
            if not restore_seen:
                errors.append(f"{df}: no dotnet restore step")
            for need in ["global.json", "Directory.Build.props", "Directory.Build.targets", "Directory.Packages.props", "build"]:
                if self.path(need).exists() and need not in copied_before_restore:
                    errors.append(f"{df}: {need} is not copied before the restore")
            for proj in sorted(closure):
                if proj not in copied_before_restore:
                    errors.append(f"{df}: {proj} (referenced by the published projects) is not copied before the restore")
            text = self.path(df).read_text(encoding="utf-8")
            kws = {kw for kw, _ in ins}
            for must in ["USER", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT"]:
                if must not in kws:
                    errors.append(f"{df}: no {must}")
            users = [a.strip() for kw, a in ins if kw == "USER"]
            if users and users[-1] in ("root", "0", "0:0"):
                errors.append(f"{df}: runs as root")
            if not any(kw == "EXPOSE" and str(HTTP_PORT) in a.split() for kw, a in ins):
                errors.append(f"{df}: does not EXPOSE {HTTP_PORT}")
            entry = [a for kw, a in ins if kw == "ENTRYPOINT"]
            if not entry or json.loads(entry[-1]) != ["dotnet", "EraserWorker.dll"]:
                errors.append(f"{df}: ENTRYPOINT must be [\"dotnet\", \"EraserWorker.dll\"]")
            if stages < 2:
                errors.append(f"{df}: not multi-stage")
            if "mcr.microsoft.com/dotnet/sdk:" not in text:
                errors.append(f"{df}: build stage is not mcr.microsoft.com/dotnet/sdk")
            device = "cuda" if df.endswith(".cuda") else "cpu"
            if f"Eraser__Compute__Device={device}" not in text:
                errors.append(f"{df}: Eraser__Compute__Device={device} not set")
        # The assembly names the images rely on.
        worker = ET.parse(self.path("src/EraserWorker/EraserWorker.csproj")).getroot()
        name = next((e.text for e in worker.iter("AssemblyName")), None) or "EraserWorker"
        if name != "EraserWorker":
            errors.append(f"src/EraserWorker assembly is {name}, the images run EraserWorker.dll")
        cli = ET.parse(self.path("src/EraserWorker.Cli/EraserWorker.Cli.csproj")).getroot()
        cli_name = next((e.text for e in cli.iter("AssemblyName")), None)
        if cli_name != "eraser":
            errors.append(f"the CLI assembly is {cli_name}, docker/eraser.sh runs eraser.dll")

    # -- docker-compose.yml -------------------------------------------------------------------------------
    def check_compose(self, errors: list[str]):
        compose = self.load_yaml("docker-compose.yml")
        services = compose.get("services", {})
        for must in ["rabbitmq", "azurite", "worker", "prometheus", "grafana"]:
            if must not in services:
                errors.append(f"docker-compose.yml: no service {must}")
        declared_volumes = set((compose.get("volumes") or {}).keys())
        for name, svc in services.items():
            build = svc.get("build")
            if build:
                ctx = build if isinstance(build, str) else build.get("context", ".")
                if not self.path(ctx).is_dir():
                    errors.append(f"{name}: build context {ctx} does not exist")
                if isinstance(build, dict) and build.get("dockerfile"):
                    if not (self.path(ctx) / build["dockerfile"]).is_file():
                        errors.append(f"{name}: dockerfile {build['dockerfile']} does not exist")
            for vol in svc.get("volumes", []) or []:
                src = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
                if src.startswith((".", "/")):
                    if not self.path(src).exists():
                        errors.append(f"{name}: bind-mount source {src} does not exist")
                elif src and src not in declared_volumes:
                    errors.append(f"{name}: named volume {src} is not declared")
            for env_file in (svc.get("env_file") or []):
                if not self.path(env_file).exists():
                    errors.append(f"{name}: env_file {env_file} does not exist")
            deps = svc.get("depends_on") or {}
            items = deps.items() if isinstance(deps, dict) else [(d, {}) for d in deps]
            for dep, cond in items:
                if dep not in services:
                    errors.append(f"{name}: depends on unknown service {dep}")
                elif (cond or {}).get("condition") == "service_healthy" and not (services[dep].get("healthcheck") or {}).get("test"):
                    errors.append(f"{name}: waits for {dep} to be healthy, but {dep} has no healthcheck")
        worker = services.get("worker", {})
        env = worker.get("environment", {})
        expected = {"Eraser__Transport__Kind": "RabbitMq", "Eraser__Transport__Host": "rabbitmq",
                    "Eraser__Storage__Kind": "AzureBlob", "Eraser__Http__Port": str(HTTP_PORT)}
        for k, v in expected.items():
            if str(env.get(k)) != v:
                errors.append(f"worker: {k} should be {v}, is {env.get(k)}")
        conn = str(env.get("Eraser__Storage__ConnectionString", ""))
        if "BlobEndpoint=http://azurite:10000/devstoreaccount1" not in conn:
            errors.append("worker: the storage connection string does not point at http://azurite:10000/devstoreaccount1")
        if worker.get("build", {}).get("dockerfile") != "docker/Dockerfile":
            errors.append("worker: should build docker/Dockerfile")
        rabbit_cmd = services.get("azurite", {}).get("command", [])
        for flag in ["azurite-blob", "--blobHost", "0.0.0.0", "--skipApiVersionCheck", "--loose"]:
            if flag not in rabbit_cmd:
                errors.append(f"azurite: command lacks {flag}")
        plugins = self.path("infra/rabbitmq/enabled_plugins")
        if plugins.exists() and "rabbitmq_prometheus" not in plugins.read_text(encoding="utf-8"):
            errors.append("infra/rabbitmq/enabled_plugins does not enable rabbitmq_prometheus")

        # Prometheus: every rule file sits next to the config inside the container.
        prom_cfg_rel = "infra/prometheus/prometheus.yml"
        prom_cfg = self.load_yaml(prom_cfg_rel)
        mounts = {}
        for vol in services.get("prometheus", {}).get("volumes", []):
            parts = vol.split(":")
            if len(parts) >= 2 and parts[0].startswith("."):
                mounts[os.path.normpath(parts[0])] = parts[1]
        cfg_target = mounts.get(os.path.normpath(prom_cfg_rel))
        if not cfg_target:
            errors.append(f"prometheus: {prom_cfg_rel} is not mounted")
        else:
            for rule in prom_cfg.get("rule_files", []):
                src = os.path.normpath(os.path.join("infra/prometheus", rule))
                want = os.path.normpath(os.path.join(os.path.dirname(cfg_target), rule))
                if not self.path(src).exists():
                    errors.append(f"prometheus.yml: rule file {rule} does not exist")
                elif mounts.get(src) != want:
                    errors.append(f"prometheus: {src} must be mounted at {want}")
        # Scrape targets name compose services.
        for job in prom_cfg.get("scrape_configs", []):
            hosts = [t.split(":")[0] for sc in job.get("static_configs", []) for t in sc.get("targets", [])]
            hosts += [n for sd in job.get("dns_sd_configs", []) for n in sd.get("names", [])]
            for h in hosts:
                if h != "localhost" and h not in services:
                    errors.append(f"prometheus.yml job {job['job_name']}: target host {h} is not a compose service")
        jobs = {j["job_name"]: j for j in prom_cfg.get("scrape_configs", [])}
        if "eraser-worker" not in jobs:
            errors.append("prometheus.yml: no job eraser-worker (the alerts select job=\"eraser-worker\")")
        detailed = [j for j in jobs.values() if j.get("metrics_path") == "/metrics/detailed"]
        if not detailed or "queue_coarse_metrics" not in detailed[0].get("params", {}).get("family", []):
            errors.append("prometheus.yml: no scrape of /metrics/detailed?family=queue_coarse_metrics")

        # Grafana: provisioning and dashboards mounted where the provider looks.
        gmounts = {}
        for vol in services.get("grafana", {}).get("volumes", []):
            parts = vol.split(":")
            if parts[0].startswith("."):
                gmounts[os.path.normpath(parts[0])] = parts[1]
        if gmounts.get("infra/grafana/provisioning") != "/etc/grafana/provisioning":
            errors.append("grafana: infra/grafana/provisioning must be mounted at /etc/grafana/provisioning")
        provider = self.load_yaml("infra/grafana/provisioning/dashboards/eraser.yml")
        paths = [p.get("options", {}).get("path") for p in provider.get("providers", [])]
        if gmounts.get("infra/grafana/dashboards") not in paths:
            errors.append(f"grafana: dashboards mounted at {gmounts.get('infra/grafana/dashboards')}, provider reads {paths}")
        genv = services.get("grafana", {}).get("environment", {})
        if str(genv.get("GF_AUTH_ANONYMOUS_ENABLED")).lower() != "true" or genv.get("GF_AUTH_ANONYMOUS_ORG_ROLE") != "Viewer":
            errors.append("grafana: anonymous viewer access is not enabled")

    # -- Grafana dashboard -------------------------------------------------------------------------------
    def dashboard_exprs(self, dash) -> list[str]:
        found = []

        def walk(node):
            if isinstance(node, dict):
                for k, v in node.items():
                    if k == "expr" and isinstance(v, str):
                        found.append(v)
                    else:
                        walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)

        walk(dash.get("panels", []))
        return found

    def check_dashboard(self, errors: list[str]):
        rel = "infra/grafana/dashboards/eraser.json"
        dash = json.loads(self.path(rel).read_text(encoding="utf-8"))
        for k in ["uid", "title", "panels", "schemaVersion"]:
            if k not in dash:
                errors.append(f"{rel}: no {k}")
        ids = []
        for p in dash.get("panels", []):
            ids.append(p.get("id"))
            gp = p.get("gridPos", {})
            if gp.get("x", 0) + gp.get("w", 0) > 24:
                errors.append(f"{rel}: panel {p.get('title')} is wider than the grid")
            if p.get("type") != "row" and not p.get("targets"):
                errors.append(f"{rel}: panel {p.get('title')} has no query")
        if len(ids) != len(set(ids)):
            errors.append(f"{rel}: duplicate panel ids")
        prov = self.load_yaml("infra/grafana/provisioning/datasources/prometheus.yml")
        uids = [d.get("uid") for d in prov.get("datasources", [])]
        var = next((v for v in dash.get("templating", {}).get("list", []) if v.get("type") == "datasource"), None)
        if var is None or var.get("current", {}).get("value") not in uids:
            errors.append(f"{rel}: the datasource variable's default is not a provisioned uid {uids}")
        text = self.path(rel).read_text(encoding="utf-8")
        for must in ["eraser_requests_received_total", "eraser_requests_failed_total", "eraser_request_latency_seconds_bucket",
                     "eraser_batch_size", "eraser_solve_duration_seconds", "eraser_solver_relative_residual",
                     "eraser_versions_published_total", "eraser_blob_bytes_total", "eraser_cache_load_duration_seconds",
                     "eraser_batches_in_flight", "rabbitmq_detailed_queue_messages_ready"]:
            if must not in text:
                errors.append(f"{rel}: no panel uses {must}")

    def check_promql(self, errors: list[str]):
        """Every dashboard query parses as PromQL (Grafana variables replaced by sample values)."""
        if not self.promtool:
            return "skip"
        dash = json.loads(self.path("infra/grafana/dashboards/eraser.json").read_text(encoding="utf-8"))
        rules = []
        for i, expr in enumerate(self.dashboard_exprs(dash)):
            e = (expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
                 .replace("$instance", ".*").replace("$queue", QUEUE))
            if "$" in e:
                errors.append(f"dashboard query uses an unknown variable: {expr}")
            rules.append({"record": f"dashboard:query_{i}", "expr": e})
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
            yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
            tmp = f.name
        try:
            proc = subprocess.run([self.promtool, "check", "rules", tmp], capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                errors.append("dashboard PromQL does not parse:\n" + proc.stdout + proc.stderr)
        finally:
            os.unlink(tmp)

    def check_alert_links(self, errors: list[str]):
        """Runbook links resolve, and the alerts watch the worker's queue."""
        # Every runbook link of the alerts points at a heading of docs/operations.md (GitHub anchors).
        docs = self.path("docs/operations.md")
        if docs.exists():
            anchors = set()
            for line in docs.read_text(encoding="utf-8").splitlines():
                m = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
                if m:
                    slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
                    anchors.add(slug)
            for link in re.findall(r"docs/operations\.md#([\w-]+)", self.path("infra/prometheus/alerts.yml").read_text(encoding="utf-8")):
                if link not in anchors:
                    errors.append(f"alerts.yml: runbook anchor #{link} is not a heading of docs/operations.md")
        else:
            errors.append("docs/operations.md (the alerts' runbook) is missing")
        # The queue the alerts watch is the worker's.
        alerts = self.path("infra/prometheus/alerts.yml").read_text(encoding="utf-8")
        for q in set(re.findall(r'queue="([^"]+)"', alerts)):
            if q != QUEUE:
                errors.append(f"alerts.yml watches queue {q}, the worker's is {QUEUE}")

    # -- Kubernetes -------------------------------------------------------------------------------------------
    def k8s_docs(self, files: list[str]) -> list[dict]:
        docs = []
        for rel in files:
            docs.extend(d for d in self.load_yaml_all(rel) if isinstance(d, dict))
        return docs

    def check_k8s_docs(self, docs: list[dict], secret_example: dict, errors: list[str], where: str, gpu: bool = False):
        by_kind: dict[str, list[dict]] = {}
        for d in docs:
            by_kind.setdefault(d.get("kind", "?"), []).append(d)
        for must in ["Namespace", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "ScaledObject", "TriggerAuthentication"]:
            if must not in by_kind:
                errors.append(f"{where}: no {must}")
        if "Secret" in by_kind:
            errors.append(f"{where}: a Secret is part of the manifests (only secret.example.yaml should hold one, outside kustomize)")
        deployments = by_kind.get("Deployment", [])
        if len(deployments) != 1:
            return
        dep = deployments[0]
        spec = dep["spec"]
        tpl = spec["template"]
        tpl_labels = tpl["metadata"].get("labels", {})
        want_replicas = 1 if gpu else 3
        if spec.get("replicas") != want_replicas:
            errors.append(f"{where}: Deployment replicas is {spec.get('replicas')}, expected {want_replicas}")

        def subset(sel, what):
            if not sel or any(tpl_labels.get(k) != v for k, v in sel.items()):
                errors.append(f"{where}: {what} selector {sel} does not select the pod template labels {tpl_labels}")

        subset(spec["selector"].get("matchLabels"), "Deployment")
        for svc in by_kind.get("Service", []):
            subset(svc["spec"].get("selector"), f"Service {svc['metadata']['name']}")
        for pdb in by_kind.get("PodDisruptionBudget", []):
            subset(pdb["spec"]["selector"].get("matchLabels"), f"PodDisruptionBudget {pdb['metadata']['name']}")

        ann = tpl["metadata"].get("annotations", {})
        if ann.get("prometheus.io/scrape") != "true" or ann.get("prometheus.io/port") != str(HTTP_PORT) or ann.get("prometheus.io/path") != "/metrics":
            errors.append(f"{where}: pod template lacks prometheus.io scrape annotations for :{HTTP_PORT}/metrics")
        pod = tpl["spec"]
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True or psc.get("runAsUser") != APP_UID:
            errors.append(f"{where}: pod must run as non-root uid {APP_UID}")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        configmaps = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}
        secret_name = secret_example["metadata"]["name"]
        secret_keys = set((secret_example.get("stringData") or {}).keys()) | set((secret_example.get("data") or {}).keys())
        containers = pod.get("containers", [])
        if len(containers) != 1:
            errors.append(f"{where}: expected one container")
            return
        c = containers[0]
        ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
        if ports.get("http") != HTTP_PORT:
            errors.append(f"{where}: container port 'http' should be {HTTP_PORT}")
        for probe, path in [("livenessProbe", "/health/live"), ("readinessProbe", "/health/ready"), ("startupProbe", "/health/live")]:
            get = (c.get(probe) or {}).get("httpGet")
            if not get:
                errors.append(f"{where}: no {probe}")
                continue
            if get.get("path") != path:
                errors.append(f"{where}: {probe} path is {get.get('path')}, expected {path}")
            if get.get("port") not in ("http", HTTP_PORT):
                errors.append(f"{where}: {probe} port {get.get('port')} is not the http port")
        csc = c.get("securityContext", {})
        if csc.get("readOnlyRootFilesystem") is not True or csc.get("allowPrivilegeEscalation") is not False:
            errors.append(f"{where}: container needs readOnlyRootFilesystem: true and allowPrivilegeEscalation: false")
        if "ALL" not in (csc.get("capabilities", {}).get("drop") or []):
            errors.append(f"{where}: container should drop ALL capabilities")
        tmp_mounts = [m for m in c.get("volumeMounts", []) if m.get("mountPath") == "/tmp"]
        if not tmp_mounts or "emptyDir" not in volumes.get(tmp_mounts[0]["name"], {}):
            errors.append(f"{where}: /tmp must be an emptyDir (read-only root filesystem)")
        res = c.get("resources", {})
        if not res.get("requests") or not res.get("limits", {}).get("memory"):
            errors.append(f"{where}: container needs resource requests and a memory limit")
        if gpu and res.get("limits", {}).get("nvidia.com/gpu") is None:
            errors.append(f"{where}: GPU variant does not request nvidia.com/gpu")
        env_from_cms = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
        for name in env_from_cms:
            if name not in configmaps:
                errors.append(f"{where}: envFrom ConfigMap {name} is not defined")
        for e in c.get("env", []):
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                if ref["name"] != secret_name or ref["key"] not in secret_keys:
                    errors.append(f"{where}: env {e['name']} refers to secret {ref['name']}/{ref['key']}, not in secret.example.yaml")
        mount_paths = [m.get("mountPath", "") for m in c.get("volumeMounts", [])]
        for cm in env_from_cms:
            work = (configmaps.get(cm, {}).get("data") or {}).get("Eraser__Worker__WorkDirectory")
            if work and not any(work == mp or work.startswith(mp.rstrip("/") + "/") for mp in mount_paths):
                errors.append(f"{where}: Eraser__Worker__WorkDirectory {work} is not on a mounted volume (read-only root filesystem)")
        env_names = {e["name"] for e in c.get("env", [])}
        for cm in env_from_cms:
            env_names |= set((configmaps.get(cm, {}).get("data") or {}).keys())
        for must in ["Eraser__Transport__Kind", "Eraser__Transport__Host", "Eraser__Transport__Username", "Eraser__Transport__Password",
                     "Eraser__Storage__Kind", "Eraser__Storage__ConnectionString", "Eraser__Http__Port"]:
            if must not in env_names:
                errors.append(f"{where}: the worker gets no {must}")
        for cm in configmaps.values():
            data = cm.get("data") or {}
            if data.get("Eraser__Http__Port") not in (None, str(HTTP_PORT)):
                errors.append(f"{where}: ConfigMap Eraser__Http__Port is not {HTTP_PORT}")
            want_device = "cuda" if gpu else "cpu"
            if data.get("Eraser__Compute__Device") != want_device:
                errors.append(f"{where}: ConfigMap Eraser__Compute__Device is {data.get('Eraser__Compute__Device')}, expected {want_device}")
            for k, v in data.items():
                if re.search(r"(?i)password|accountkey|connectionstring|secret", k + "=" + str(v)):
                    errors.append(f"{where}: ConfigMap key {k} looks like a secret")
        auths = {a["metadata"]["name"]: a for a in by_kind.get("TriggerAuthentication", [])}
        for a in auths.values():
            for ref in a["spec"].get("secretTargetRef", []):
                if ref["name"] != secret_name or ref["key"] not in secret_keys:
                    errors.append(f"{where}: TriggerAuthentication uses {ref['name']}/{ref['key']}, not in secret.example.yaml")
        for so in by_kind.get("ScaledObject", []):
            target = so["spec"]["scaleTargetRef"]
            if target.get("name") != dep["metadata"]["name"]:
                errors.append(f"{where}: ScaledObject targets {target.get('name')}")
            for trig in so["spec"].get("triggers", []):
                if trig.get("type") != "rabbitmq":
                    continue
                if trig["metadata"].get("queueName") != QUEUE:
                    errors.append(f"{where}: KEDA trigger watches {trig['metadata'].get('queueName')}, expected {QUEUE}")
                if (trig.get("authenticationRef") or {}).get("name") not in auths:
                    errors.append(f"{where}: KEDA trigger's authenticationRef is not a TriggerAuthentication here")
            if so["spec"].get("minReplicaCount", 0) > so["spec"].get("maxReplicaCount", 100):
                errors.append(f"{where}: ScaledObject min > max")

    def check_k8s_sources(self, errors: list[str]):
        secret_docs = self.load_yaml_all("infra/k8s/secret.example.yaml")
        if len(secret_docs) != 1 or secret_docs[0].get("kind") != "Secret":
            errors.append("infra/k8s/secret.example.yaml: expected one Secret")
            return
        secret = secret_docs[0]
        for k, v in (secret.get("stringData") or {}).items():
            if "REPLACE_ME" not in str(v):
                errors.append(f"secret.example.yaml: {k} is not a placeholder (REPLACE_ME)")
        if secret.get("data"):
            errors.append("secret.example.yaml: use stringData placeholders, not data")
        # Every kustomization's resources exist; no Secret is included.
        for kfile in sorted(self.path("infra/k8s").rglob("kustomization.yaml")):
            k = yaml.safe_load(kfile.read_text(encoding="utf-8"))
            for r in k.get("resources", []):
                if not (kfile.parent / r).exists():
                    errors.append(f"{kfile.relative_to(self.repo)}: resource {r} does not exist")
                if "secret" in r:
                    errors.append(f"{kfile.relative_to(self.repo)}: includes {r}")
        base = [str(p.relative_to(self.repo)) for p in sorted(self.path("infra/k8s/base").glob("*.yaml")) if p.name != "kustomization.yaml"]
        self.check_k8s_docs(self.k8s_docs(base), secret, errors, "infra/k8s/base")
        # No credential-looking value anywhere under infra/k8s except placeholders.
        for p in sorted(self.path("infra/k8s").rglob("*.yaml")):
            for m in re.finditer(r"AccountKey=([^;\s]+)|amqps?://([^:@/\s]+):([^@\s]+)@", p.read_text(encoding="utf-8")):
                if "REPLACE_ME" not in m.group(0) and "USER:PASSWORD" not in m.group(0) and "..." not in m.group(0):
                    errors.append(f"{p.relative_to(self.repo)}: credential-looking value {m.group(0)[:40]}...")

    def check_kustomize(self, errors: list[str]):
        if self.kubectl:
            cmd = [self.kubectl, "kustomize"] if os.path.basename(self.kubectl) == "kubectl" else [self.kubectl, "build"]
        else:
            return "skip"
        secret = self.load_yaml("infra/k8s/secret.example.yaml")
        for target, gpu in [("infra/k8s", False), ("infra/k8s/overlays/gpu", True)]:
            proc = subprocess.run(cmd + [str(self.path(target))], capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                errors.append(f"{' '.join(cmd)} {target} failed:\n{proc.stderr}")
                continue
            docs = [d for d in yaml.safe_load_all(proc.stdout) if isinstance(d, dict)]
            for d in docs:
                ns = d.get("metadata", {}).get("namespace")
                if d.get("kind") != "Namespace" and ns != secret["metadata"]["namespace"]:
                    errors.append(f"{target}: {d.get('kind')}/{d['metadata'].get('name')} is in namespace {ns}")
            self.check_k8s_docs(docs, secret, errors, f"{target} (rendered)", gpu=gpu)
            images = [c["image"] for d in docs if d.get("kind") == "Deployment"
                      for c in d["spec"]["template"]["spec"]["containers"]]
            if any(":" not in i.rsplit("/", 1)[-1] for i in images):
                errors.append(f"{target}: image without a tag: {images}")

    def main(self) -> int:
        self.run("YAML and JSON files parse", self.check_parse)
        self.run(".dockerignore", self.check_dockerignore)
        self.run("Dockerfiles: paths, restore inputs, runtime settings", self.check_dockerfiles)
        self.run("docker-compose.yml: paths, dependencies, names", self.check_compose)
        self.run("Grafana dashboard structure", self.check_dashboard)
        self.run("dashboard PromQL parses (promtool)", self.check_promql)
        self.run("alerts: runbook links and queue name", self.check_alert_links)
        self.run("Kubernetes manifests (sources)", self.check_k8s_sources)
        self.run("Kubernetes manifests (kustomize-rendered)", self.check_kustomize)
        failed = 0
        for status, name, errors in self.results:
            print(f"  [{status}] {name}")
            for e in errors:
                print("         " + e.replace("\n", "\n         "))
            failed += status == "FAIL"
        return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parent.parent))
    ap.add_argument("--promtool", default=shutil.which("promtool"))
    ap.add_argument("--kubectl", default=shutil.which("kubectl") or shutil.which("kustomize"))
    args = ap.parse_args()
    return Checker(Path(args.repo), args.promtool, args.kubectl).main()


if __name__ == "__main__":
    sys.exit(main())
