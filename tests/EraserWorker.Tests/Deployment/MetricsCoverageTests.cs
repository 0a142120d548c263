using System.Diagnostics;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using EraserWorker.Components.Observability;
using Prometheus;
using Xunit.Abstractions;

namespace EraserWorker.Tests.Deployment;

/// <summary>
/// Keeps the alert rules (infra/prometheus/alerts.yml), the Grafana dashboard
/// (infra/grafana/dashboards/eraser.json) and the metrics the worker exports (<see cref="EraserMetrics"/>) in step,
/// checks the metric names against Prometheus' conventions, and runs infra/check.sh.
/// </summary>
public sealed partial class MetricsCoverageTests(ITestOutputHelper output)
{
    private const string AlertsFile = "infra/prometheus/alerts.yml";
    private const string DashboardFile = "infra/grafana/dashboards/eraser.json";
    private static readonly string[] HistogramSuffixes = ["_bucket", "_sum", "_count"];

    [Fact]
    public async Task Every_eraser_metric_used_by_alerts_and_dashboard_is_defined_and_exported()
    {
        var root = RepoRoot();
        var used = new SortedDictionary<string, SortedSet<string>>(StringComparer.Ordinal);
        foreach (var expr in AlertExpressions(Path.Combine(root, AlertsFile)))
        {
            CollectMetricNames(expr, "alerts.yml", used);
        }

        foreach (var expr in DashboardExpressions(Path.Combine(root, DashboardFile)))
        {
            CollectMetricNames(expr, "eraser.json", used);
        }

        // Guards against an extraction that silently finds nothing.
        Assert.True(used.Count >= 10, $"only {used.Count} eraser_ metric names found in {AlertsFile} and {DashboardFile}: {string.Join(", ", used.Keys)}");

        var exposition = await ExportAllAsync();
        var problems = new List<string>();
        foreach (var (name, where) in used)
        {
            var family = FamilyOf(name);
            var place = string.Join(", ", where);
            if (!EraserMetrics.MetricNames.Contains(family))
            {
                problems.Add($"{name} (used in {place}) is not in EraserMetrics.MetricNames");
            }
            else if (!exposition.Types.ContainsKey(family))
            {
                problems.Add($"{family} (used in {place}) is listed but not exported by EraserMetrics");
            }
            else if (!exposition.SampleNames.Contains(name))
            {
                problems.Add($"{name} (used in {place}) is not among the samples exported for {family} ({exposition.Types[family]})");
            }
        }

        Assert.True(problems.Count == 0, string.Join(Environment.NewLine, problems));
        output.WriteLine($"{used.Count} metric names checked: {string.Join(", ", used.Keys)}");
    }

    [Fact]
    public async Task Metric_names_follow_prometheus_conventions()
    {
        var names = EraserMetrics.MetricNames;
        Assert.Equal(names.Count, names.Distinct(StringComparer.Ordinal).Count());

        var exposition = await ExportAllAsync();
        var exportedEraser = exposition.Types.Keys.Where(n => n.StartsWith("eraser_", StringComparison.Ordinal)).ToHashSet(StringComparer.Ordinal);
        Assert.True(exportedEraser.SetEquals(names),
            $"exported eraser_ families and EraserMetrics.MetricNames differ: only exported [{string.Join(", ", exportedEraser.Except(names))}], " +
            $"only listed [{string.Join(", ", names.Except(exportedEraser))}]");

        string[] nonBaseUnits = ["milliseconds", "ms", "microseconds", "us", "nanoseconds", "ns", "minutes", "hours", "days",
            "kilobytes", "megabytes", "gigabytes", "kb", "mb", "gb", "percent"];
        var problems = new List<string>();
        foreach (var name in names)
        {
            if (!SnakeCaseName().IsMatch(name))
            {
                problems.Add($"{name}: not lowercase snake_case starting with eraser_");
            }

            var type = exposition.Types.GetValueOrDefault(name, "(not exported)");
            var isCounter = type == "counter";
            if (isCounter != name.EndsWith("_total", StringComparison.Ordinal))
            {
                problems.Add(isCounter ? $"{name}: a counter must end in _total" : $"{name}: a {type} must not end in _total");
            }

            if (!isCounter && HistogramSuffixes.Concat(["_created"]).Any(s => name.EndsWith(s, StringComparison.Ordinal)))
            {
                problems.Add($"{name}: ends in a suffix Prometheus reserves for histogram/summary samples");
            }

            if (name.Split('_').Intersect(nonBaseUnits).FirstOrDefault() is { } unit)
            {
                problems.Add($"{name}: '{unit}' is not a base unit (use seconds, bytes, ratios)");
            }

            if (string.IsNullOrWhiteSpace(exposition.Help.GetValueOrDefault(name)))
            {
                problems.Add($"{name}: no help text");
            }
        }

        foreach (var label in exposition.LabelNames)
        {
            if (!LabelName().IsMatch(label) || label.StartsWith("__", StringComparison.Ordinal))
            {
                problems.Add($"label {label}: not a lowercase snake_case label name");
            }
        }

        Assert.True(problems.Count == 0, string.Join(Environment.NewLine, problems));
    }

    [Fact]
    public async Task Label_values_from_messages_are_bounded_and_bad_observations_are_dropped()
    {
        var registry = Metrics.NewCustomRegistry();
        var metrics = new EraserMetrics(registry);
        metrics.RequestReceived("remove");
        metrics.RequestReceived("'; DROP TABLE adapters; --");
        metrics.RequestReceived(null);
        metrics.RequestFailed("modifyQuery", "not a code!");
        metrics.ObserveSolve("CG", double.NaN, -1, double.PositiveInfinity);

        var text = await ExportTextAsync(registry);
        Assert.Contains("eraser_requests_received_total{task=\"remove\"} 1", text, StringComparison.Ordinal);
        Assert.Contains("eraser_requests_received_total{task=\"unknown\"} 2", text, StringComparison.Ordinal);
        Assert.Contains("eraser_requests_failed_total{task=\"modifyQuery\",code=\"unknown\"} 1", text, StringComparison.Ordinal);
        Assert.DoesNotContain("DROP", text, StringComparison.Ordinal);
        Assert.DoesNotContain("NaN", text, StringComparison.Ordinal);
        Assert.DoesNotContain("eraser_solve_duration_seconds_count{solver=\"cg\"} 1", text, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Infra_check_script_passes()
    {
        var root = RepoRoot();
        if (FindOnPath("promtool") is null)
        {
            if (Environment.GetEnvironmentVariable("ERASER_TEST_ALLOW_MISSING_SERVICES") == "1")
            {
                output.WriteLine("SKIPPED: promtool is not installed (ERASER_TEST_ALLOW_MISSING_SERVICES=1).");
                return;
            }

            Assert.Fail("promtool is not installed, so infra/check.sh cannot run. Install it with "
                + "`apt-get install -y prometheus python3-yaml` (Debian/Ubuntu), or set ERASER_TEST_ALLOW_MISSING_SERVICES=1 to skip this test.");
        }

        var bash = FindOnPath("bash");
        Assert.True(bash is not null, "bash is needed to run infra/check.sh");

        var start = new ProcessStartInfo(bash!)
        {
            WorkingDirectory = root,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add(Path.Combine(root, "infra", "check.sh"));
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using (var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(5)))
        {
            try
            {
                await process.WaitForExitAsync(timeout.Token);
            }
            catch (OperationCanceledException)
            {
                process.Kill(entireProcessTree: true);
                Assert.Fail("infra/check.sh did not finish within 5 minutes");
            }
        }

        var text = await stdout + await stderr;
        output.WriteLine(text);
        Assert.True(process.ExitCode == 0, $"infra/check.sh exited with {process.ExitCode}:{Environment.NewLine}{text}");
    }

    // ---------------------------------------------------------------------------------------------------------

    /// <summary>The repository root: the nearest folder above the test binaries holding EraserWorker.sln
    /// (ERASER_REPO_ROOT overrides, for test binaries built outside the tree).</summary>
    private static string RepoRoot()
    {
        var fromEnv = Environment.GetEnvironmentVariable("ERASER_REPO_ROOT");
        if (!string.IsNullOrEmpty(fromEnv) && File.Exists(Path.Combine(fromEnv, "EraserWorker.sln")))
        {
            return fromEnv;
        }

        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "EraserWorker.sln")))
            {
                return dir.FullName;
            }
        }

        throw new InvalidOperationException($"no EraserWorker.sln above {AppContext.BaseDirectory}");
    }

    /// <summary>The PromQL of every <c>expr:</c> in a rules file: inline, quoted, or a block scalar (| or >).</summary>
    private static List<string> AlertExpressions(string path)
    {
        var lines = File.ReadAllLines(path);
        var result = new List<string>();
        for (var i = 0; i < lines.Length; i++)
        {
            var m = ExprLine().Match(lines[i]);
            if (!m.Success)
            {
                continue;
            }

            var indent = m.Groups["indent"].Length;
            var value = m.Groups["value"].Value.Trim();
            if (value.StartsWith('|') || value.StartsWith('>'))
            {
                var block = new StringBuilder();
                while (i + 1 < lines.Length && (lines[i + 1].Trim().Length == 0 || Indent(lines[i + 1]) > indent))
                {
                    block.AppendLine(lines[++i].Trim());
                }

                result.Add(block.ToString());
            }
            else
            {
                result.Add(value.Trim('"', '\''));
            }
        }

        Assert.True(result.Count > 0, $"no expr: found in {path}");
        return result;
    }

    private static int Indent(string line) => line.Length - line.TrimStart(' ').Length;

    /// <summary>Every query of the dashboard: panel targets' <c>expr</c>, and variables' <c>query</c>/<c>definition</c>.</summary>
    private static List<string> DashboardExpressions(string path)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(path));
        var result = new List<string>();
        Walk(doc.RootElement);
        Assert.True(result.Count > 0, $"no expr found in {path}");
        return result;

        void Walk(JsonElement e)
        {
            switch (e.ValueKind)
            {
                case JsonValueKind.Object:
                    foreach (var p in e.EnumerateObject())
                    {
                        if (p.Value.ValueKind == JsonValueKind.String && p.Name is "expr" or "query" or "definition")
                        {
                            result.Add(p.Value.GetString()!);
                        }
                        else
                        {
                            Walk(p.Value);
                        }
                    }

                    break;
                case JsonValueKind.Array:
                    foreach (var item in e.EnumerateArray())
                    {
                        Walk(item);
                    }

                    break;
            }
        }
    }

    private static void CollectMetricNames(string expr, string where, SortedDictionary<string, SortedSet<string>> into)
    {
        foreach (Match m in EraserMetricName().Matches(expr))
        {
            if (!into.TryGetValue(m.Value, out var set))
            {
                into[m.Value] = set = new SortedSet<string>(StringComparer.Ordinal);
            }

            set.Add(where);
        }
    }

    /// <summary>The metric family of a name used in PromQL: histograms are queried through their
    /// <c>_bucket</c>/<c>_sum</c>/<c>_count</c> series.</summary>
    private static string FamilyOf(string name)
    {
        if (EraserMetrics.MetricNames.Contains(name))
        {
            return name;
        }

        foreach (var suffix in HistogramSuffixes)
        {
            if (name.EndsWith(suffix, StringComparison.Ordinal) && EraserMetrics.MetricNames.Contains(name[..^suffix.Length]))
            {
                return name[..^suffix.Length];
            }
        }

        return name;
    }

    private sealed record Exposition(
        Dictionary<string, string> Types,
        Dictionary<string, string> Help,
        HashSet<string> SampleNames,
        HashSet<string> LabelNames);

    /// <summary>An <see cref="EraserMetrics"/> on a fresh registry with every collector touched once, exported as
    /// Prometheus text and parsed.</summary>
    private static async Task<Exposition> ExportAllAsync()
    {
        var registry = Metrics.NewCustomRegistry();
        var metrics = new EraserMetrics(registry);
        metrics.RequestReceived("remove");
        metrics.RequestCompleted("remove", TimeSpan.FromSeconds(12));
        metrics.RequestFailed("correctResponse", "UnknownSample");
        metrics.ObserveBatch(3);
        metrics.ObserveSolve("cg", 0.25, 17, 3e-9);
        metrics.VersionPublished();
        metrics.HeadConflict();
        metrics.BlobRead(1024);
        metrics.BlobWritten(2048);
        metrics.ObserveCacheLoad(TimeSpan.FromSeconds(1.5));
        metrics.SetCachedAdapters(2);
        using (metrics.TrackBatchInFlight())
        {
            metrics.MarkBatchCompleted(DateTimeOffset.UtcNow);
        }

        var text = await ExportTextAsync(registry);
        var types = new Dictionary<string, string>(StringComparer.Ordinal);
        var help = new Dictionary<string, string>(StringComparer.Ordinal);
        var samples = new HashSet<string>(StringComparer.Ordinal);
        var labels = new HashSet<string>(StringComparer.Ordinal);
        foreach (var line in text.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (line.StartsWith("# TYPE ", StringComparison.Ordinal))
            {
                var parts = line.Split(' ', 4);
                types[parts[2]] = parts[3];
            }
            else if (line.StartsWith("# HELP ", StringComparison.Ordinal))
            {
                var parts = line.Split(' ', 4);
                help[parts[2]] = parts.Length > 3 ? parts[3] : "";
            }
            else if (!line.StartsWith('#'))
            {
                var m = SampleLine().Match(line);
                Assert.True(m.Success, $"unparsable exposition line: {line}");
                samples.Add(m.Groups["name"].Value);
                foreach (Match l in LabelPair().Matches(m.Groups["labels"].Value))
                {
                    labels.Add(l.Groups["label"].Value);
                }
            }
        }

        return new Exposition(types, help, samples, labels);
    }

    private static async Task<string> ExportTextAsync(CollectorRegistry registry)
    {
        using var stream = new MemoryStream();
        await registry.CollectAndExportAsTextAsync(stream);
        return Encoding.UTF8.GetString(stream.ToArray());
    }

    private static string? FindOnPath(string program)
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
        {
            var candidate = Path.Combine(dir, program);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        return null;
    }

    [GeneratedRegex(@"^(?<indent>\s*)(?:-\s+)?expr:\s*(?<value>.*)$")]
    private static partial Regex ExprLine();

    [GeneratedRegex(@"(?<![A-Za-z0-9_:])eraser_[a-z0-9_]+(?![A-Za-z0-9_:])")]
    private static partial Regex EraserMetricName();

    [GeneratedRegex(@"^eraser_[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")]
    private static partial Regex SnakeCaseName();

    [GeneratedRegex(@"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")]
    private static partial Regex LabelName();

    [GeneratedRegex(@"^(?<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?<labels>[^}]*)\})?\s+\S+")]
    private static partial Regex SampleLine();

    [GeneratedRegex(@"(?<label>[a-zA-Z_][a-zA-Z0-9_]*)=""")]
    private static partial Regex LabelPair();
}
