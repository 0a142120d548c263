using System.Globalization;
using Prometheus;

namespace EraserWorker.Components.Observability;

/// <summary>
/// Every Prometheus collector the worker exports (SPEC §5: names start with <c>eraser_</c>, base units,
/// <c>_total</c> on counters). Register one instance as a singleton; it is bound to one
/// <see cref="CollectorRegistry"/> (<see cref="Metrics.DefaultRegistry"/> unless one is given, which tests do).
/// </summary>
/// <remarks>
/// Label values that come from messages (<c>task</c>) are mapped onto a closed set, and the other label values
/// are checked against a small pattern, so a hostile or buggy publisher cannot create unbounded series.
/// The alert rules in <c>infra/prometheus/alerts.yml</c> and the dashboard <c>infra/grafana/dashboards/eraser.json</c>
/// use these names; <c>tests/EraserWorker.Tests/Deployment/MetricsCoverageTests.cs</c> keeps them in step.
/// </remarks>
public sealed class EraserMetrics
{
    /// <summary>Label value used for any value outside the accepted set or pattern.</summary>
    public const string UnknownLabelValue = "unknown";

    private const string RequestsReceivedName = "eraser_requests_received_total";
    private const string RequestsCompletedName = "eraser_requests_completed_total";
    private const string RequestsFailedName = "eraser_requests_failed_total";
    private const string BatchSizeName = "eraser_batch_size";
    private const string SolveDurationName = "eraser_solve_duration_seconds";
    private const string SolverIterationsName = "eraser_solver_iterations";
    private const string SolverResidualName = "eraser_solver_relative_residual";
    private const string SolvesRejectedName = "eraser_solves_rejected_total";
    private const string RequestLatencyName = "eraser_request_latency_seconds";
    private const string VersionsPublishedName = "eraser_versions_published_total";
    private const string HeadConflictsName = "eraser_head_conflicts_total";
    private const string BlobBytesName = "eraser_blob_bytes_total";
    private const string CacheLoadDurationName = "eraser_cache_load_duration_seconds";
    private const string CachedAdaptersName = "eraser_cached_adapters";
    private const string BatchesInFlightName = "eraser_batches_in_flight";
    private const string LastSuccessName = "eraser_last_success_timestamp_seconds";

    /// <summary>Every metric family name this class exports, in declaration order.</summary>
    public static IReadOnlyList<string> MetricNames { get; } =
    [
        RequestsReceivedName,
        RequestsCompletedName,
        RequestsFailedName,
        BatchSizeName,
        SolveDurationName,
        SolverIterationsName,
        SolverResidualName,
        SolvesRejectedName,
        RequestLatencyName,
        VersionsPublishedName,
        HeadConflictsName,
        BlobBytesName,
        CacheLoadDurationName,
        CachedAdaptersName,
        BatchesInFlightName,
        LastSuccessName,
    ];

    /// <summary>The <c>task</c> label values (SPEC §3); anything else is counted as <see cref="UnknownLabelValue"/>.</summary>
    public static IReadOnlyList<string> Tasks { get; } = ["remove", "modifyQuery", "correctResponse"];

    /// <summary>Failure codes fixed by SPEC §3; their series are created at zero so that <c>rate()</c> sees the first failure.</summary>
    public static IReadOnlyList<string> KnownFailureCodes => EraserWorker.Contracts.FailureCodes.All;

    /// <summary>Values of the <c>direction</c> label of <c>eraser_blob_bytes_total</c>.</summary>
    public static IReadOnlyList<string> BlobDirections { get; } = ["read", "write"];

    /// <summary>Batch-size buckets: 1, 2, 4, …, 256 requests.</summary>
    internal static readonly double[] BatchSizeBuckets = Histogram.ExponentialBuckets(1, 2, 9);

    /// <summary>Solve time: 1 ms … ~524 s, doubling.</summary>
    internal static readonly double[] SolveDurationBuckets = Histogram.ExponentialBuckets(0.001, 2, 20);

    /// <summary>Solver iterations: 1 … 16384, doubling (the direct solver reports 1).</summary>
    internal static readonly double[] IterationBuckets = Histogram.ExponentialBuckets(1, 2, 15);

    /// <summary>Relative residual ‖H'x − b‖/‖b‖: decades 1e-12 … 1 (written out to keep them exact).</summary>
    internal static readonly double[] ResidualBuckets =
        [1e-12, 1e-11, 1e-10, 1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1];

    /// <summary>Publish-to-completion latency: 10 ms … ~655 s, doubling.</summary>
    internal static readonly double[] LatencyBuckets = Histogram.ExponentialBuckets(0.01, 2, 17);

    /// <summary>Cache (adapter + gradient cache) load time: 10 ms … ~655 s, doubling.</summary>
    internal static readonly double[] CacheLoadBuckets = Histogram.ExponentialBuckets(0.01, 2, 17);

    /// <summary>Creates the collectors on <see cref="Metrics.DefaultRegistry"/> (what <c>/metrics</c> serves).</summary>
    public EraserMetrics()
        : this(Metrics.DefaultRegistry)
    {
    }

    /// <summary>Creates the collectors on <paramref name="registry"/>. Creating a second instance on the same
    /// registry is allowed and shares the collectors (prometheus-net returns the existing ones).</summary>
    public EraserMetrics(CollectorRegistry registry)
    {
        ArgumentNullException.ThrowIfNull(registry);
        Registry = registry;
        var factory = Metrics.WithCustomRegistry(registry);

        RequestsReceived = factory.CreateCounter(RequestsReceivedName,
            "Unlearning requests received from eraser.unlearning-requested, by task.",
            new CounterConfiguration { LabelNames = ["task"] });
        RequestsCompleted = factory.CreateCounter(RequestsCompletedName,
            "Unlearning requests completed (a completion event was published, redeliveries included), by task.",
            new CounterConfiguration { LabelNames = ["task"] });
        RequestsFailed = factory.CreateCounter(RequestsFailedName,
            "Unlearning requests that failed (a failure event was published), by task and failure code.",
            new CounterConfiguration { LabelNames = ["task", "code"] });

        BatchSize = factory.CreateHistogram(BatchSizeName,
            "Number of requests in each batch the worker processed together.",
            new HistogramConfiguration { Buckets = BatchSizeBuckets });

        SolveDuration = factory.CreateHistogram(SolveDurationName,
            "Wall-clock time of one solve of H'x = b, in seconds, by solver actually used.",
            new HistogramConfiguration { LabelNames = ["solver"], Buckets = SolveDurationBuckets });
        SolverIterations = factory.CreateHistogram(SolverIterationsName,
            "Iterations one solve took (1 for the direct solver), by solver.",
            new HistogramConfiguration { LabelNames = ["solver"], Buckets = IterationBuckets });
        SolverRelativeResidual = factory.CreateHistogram(SolverResidualName,
            "True relative residual ||H'x - b|| / ||b|| of each solve, by solver.",
            new HistogramConfiguration { LabelNames = ["solver"], Buckets = ResidualBuckets });
        SolvesRejected = factory.CreateCounter(SolvesRejectedName,
            "Solves refused because they did not meet their tolerance, were not finite or were zero for a non-empty edit set; " +
            "no version was written and their requests failed with NumericalFailure. By solver.",
            new CounterConfiguration { LabelNames = ["solver"] });

        RequestLatency = factory.CreateHistogram(RequestLatencyName,
            "Time from a request's publication to the publication of its completion, in seconds.",
            new HistogramConfiguration { Buckets = LatencyBuckets });

        VersionsPublished = factory.CreateCounter(VersionsPublishedName,
            "Adapter versions written and made head (one eraser.adapter-version-published event each).");
        HeadConflicts = factory.CreateCounter(HeadConflictsName,
            "Head updates rejected by the ETag precondition (another replica moved the head): reload and recompute.");

        BlobBytes = factory.CreateCounter(BlobBytesName,
            "Bytes transferred to or from the adapter store, by direction (read|write).",
            new CounterConfiguration { LabelNames = ["direction"] });

        CacheLoadDuration = factory.CreateHistogram(CacheLoadDurationName,
            "Time to load an adapter and its gradient cache into memory (cold start of an adapter), in seconds.",
            new HistogramConfiguration { Buckets = CacheLoadBuckets });
        CachedAdapters = factory.CreateGauge(CachedAdaptersName,
            "Adapters currently held warm in memory.");

        BatchesInFlight = factory.CreateGauge(BatchesInFlightName,
            "Batches being processed right now.");
        LastSuccessTimestamp = factory.CreateGauge(LastSuccessName,
            "Unix time in seconds of the last batch completed successfully (0 before the first).");

        // Series at zero from the start, so that rate() and increase() see the first event.
        foreach (var task in Tasks)
        {
            RequestsReceived.WithLabels(task);
            RequestsCompleted.WithLabels(task);
            foreach (var code in KnownFailureCodes)
            {
                RequestsFailed.WithLabels(task, code);
            }
        }

        foreach (var direction in BlobDirections)
        {
            BlobBytes.WithLabels(direction);
        }
    }

    /// <summary>The registry the collectors live in.</summary>
    public CollectorRegistry Registry { get; }

    /// <summary><c>eraser_requests_received_total{task}</c>.</summary>
    public Counter RequestsReceived { get; }

    /// <summary><c>eraser_requests_completed_total{task}</c>.</summary>
    public Counter RequestsCompleted { get; }

    /// <summary><c>eraser_requests_failed_total{task,code}</c>.</summary>
    public Counter RequestsFailed { get; }

    /// <summary><c>eraser_batch_size</c>.</summary>
    public Histogram BatchSize { get; }

    /// <summary><c>eraser_solve_duration_seconds{solver}</c>.</summary>
    public Histogram SolveDuration { get; }

    /// <summary><c>eraser_solver_iterations{solver}</c>.</summary>
    public Histogram SolverIterations { get; }

    /// <summary><c>eraser_solver_relative_residual{solver}</c>.</summary>
    public Histogram SolverRelativeResidual { get; }

    /// <summary><c>eraser_solves_rejected_total{solver}</c>.</summary>
    public Counter SolvesRejected { get; }

    /// <summary><c>eraser_request_latency_seconds</c>.</summary>
    public Histogram RequestLatency { get; }

    /// <summary><c>eraser_versions_published_total</c>.</summary>
    public Counter VersionsPublished { get; }

    /// <summary><c>eraser_head_conflicts_total</c>.</summary>
    public Counter HeadConflicts { get; }

    /// <summary><c>eraser_blob_bytes_total{direction}</c>.</summary>
    public Counter BlobBytes { get; }

    /// <summary><c>eraser_cache_load_duration_seconds</c>.</summary>
    public Histogram CacheLoadDuration { get; }

    /// <summary><c>eraser_cached_adapters</c>.</summary>
    public Gauge CachedAdapters { get; }

    /// <summary><c>eraser_batches_in_flight</c>.</summary>
    public Gauge BatchesInFlight { get; }

    /// <summary><c>eraser_last_success_timestamp_seconds</c>.</summary>
    public Gauge LastSuccessTimestamp { get; }

    /// <summary>Counts a received request. <paramref name="task"/> is the message's raw task string.</summary>
    public void RequestReceived(string? task) => RequestsReceived.WithLabels(TaskLabel(task)).Inc();

    /// <summary>Counts a completed request and, when known, its publish-to-completion latency.</summary>
    public void RequestCompleted(string? task, TimeSpan? publishToCompletion = null)
    {
        RequestsCompleted.WithLabels(TaskLabel(task)).Inc();
        if (publishToCompletion is { } latency)
        {
            ObserveRequestLatency(latency);
        }
    }

    /// <summary>Counts a failed request with its failure code (e.g. <c>UnknownSample</c>).</summary>
    public void RequestFailed(string? task, string? code) =>
        RequestsFailed.WithLabels(TaskLabel(task), CodeLabel(code)).Inc();

    /// <summary>Records the publish-to-completion latency of one request (negative clock skew counts as 0).</summary>
    public void ObserveRequestLatency(TimeSpan latency) => RequestLatency.Observe(Math.Max(0, latency.TotalSeconds));

    /// <summary>Records the number of requests in a batch.</summary>
    public void ObserveBatch(int requests)
    {
        if (requests > 0)
        {
            BatchSize.Observe(requests);
        }
    }

    /// <summary>Counts a solve refused by the acceptance rule (no version written).</summary>
    public void SolveRejected(string? solver) => SolvesRejected.WithLabels(SolverLabel(solver)).Inc();

    /// <summary>Records one solve: its time, iterations and true relative residual. Non-finite or negative
    /// values are skipped (a NaN would poison the histogram's sum for the life of the process).</summary>
    public void ObserveSolve(string? solver, double seconds, int iterations, double relativeResidual)
    {
        var label = SolverLabel(solver);
        if (double.IsFinite(seconds) && seconds >= 0)
        {
            SolveDuration.WithLabels(label).Observe(seconds);
        }

        if (iterations >= 0)
        {
            SolverIterations.WithLabels(label).Observe(iterations);
        }

        if (double.IsFinite(relativeResidual) && relativeResidual >= 0)
        {
            SolverRelativeResidual.WithLabels(label).Observe(relativeResidual);
        }
    }

    /// <summary>Counts one adapter version made head.</summary>
    public void VersionPublished() => VersionsPublished.Inc();

    /// <summary>Counts one head update lost to a concurrent writer (ETag precondition failed).</summary>
    public void HeadConflict() => HeadConflicts.Inc();

    /// <summary>Counts bytes read from the adapter store.</summary>
    public void BlobRead(long bytes)
    {
        if (bytes > 0)
        {
            BlobBytes.WithLabels("read").Inc(bytes);
        }
    }

    /// <summary>Counts bytes written to the adapter store.</summary>
    public void BlobWritten(long bytes)
    {
        if (bytes > 0)
        {
            BlobBytes.WithLabels("write").Inc(bytes);
        }
    }

    /// <summary>Records how long loading an adapter and its cache took.</summary>
    public void ObserveCacheLoad(TimeSpan duration) => CacheLoadDuration.Observe(Math.Max(0, duration.TotalSeconds));

    /// <summary>Sets the number of adapters held warm in memory.</summary>
    public void SetCachedAdapters(int count) => CachedAdapters.Set(Math.Max(0, count));

    /// <summary>Counts a batch as in flight until the returned handle is disposed.</summary>
    public IDisposable TrackBatchInFlight() => BatchesInFlight.TrackInProgress();

    /// <summary>Records that a batch completed successfully at <paramref name="at"/> (default: now).</summary>
    public void MarkBatchCompleted(DateTimeOffset? at = null) =>
        LastSuccessTimestamp.SetToTimeUtc(at ?? DateTimeOffset.UtcNow);

    /// <summary>Maps a message's task onto the closed label set (<see cref="Tasks"/> or <c>unknown</c>).</summary>
    public static string TaskLabel(string? task)
    {
        foreach (var known in Tasks)
        {
            if (string.Equals(known, task, StringComparison.Ordinal))
            {
                return known;
            }
        }

        return UnknownLabelValue;
    }

    /// <summary>Failure codes are identifiers chosen by the worker (letters and digits, at most 64); anything
    /// else becomes <c>unknown</c>.</summary>
    public static string CodeLabel(string? code) =>
        IsIdentifier(code, 64, allowLower: true, allowUpper: true, allowPunctuation: false) ? code! : UnknownLabelValue;

    /// <summary>Solver names are lowercase identifiers (<c>direct</c>, <c>cg</c>, <c>llmeraser</c>, …), at most 32
    /// characters; they are lowercased, and anything else becomes <c>unknown</c>.</summary>
    public static string SolverLabel(string? solver)
    {
        var lower = solver?.ToLower(CultureInfo.InvariantCulture);
        return IsIdentifier(lower, 32, allowLower: true, allowUpper: false, allowPunctuation: true) ? lower! : UnknownLabelValue;
    }

    private static bool IsIdentifier(string? value, int maxLength, bool allowLower, bool allowUpper, bool allowPunctuation)
    {
        if (string.IsNullOrEmpty(value) || value.Length > maxLength || !char.IsAsciiLetter(value[0]))
        {
            return false;
        }

        foreach (var c in value)
        {
            var ok = char.IsAsciiDigit(c)
                || (allowLower && char.IsAsciiLetterLower(c))
                || (allowUpper && char.IsAsciiLetterUpper(c))
                || (allowPunctuation && (c == '_' || c == '-'));
            if (!ok)
            {
                return false;
            }
        }

        return true;
    }
}
