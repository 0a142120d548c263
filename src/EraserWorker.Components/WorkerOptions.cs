using System.ComponentModel.DataAnnotations;
using EraserWorker.Core.Influence;

namespace EraserWorker.Components;

/// <summary><c>Eraser:Worker</c>: batching, limits and local working state.</summary>
public sealed class WorkerOptions
{
    public const string SectionName = "Eraser:Worker";

    /// <summary>Most requests in one batch (one solve per adapter per batch).</summary>
    [Range(1, 1000)] public int BatchMessageLimit { get; set; } = 64;

    /// <summary>How long a batch waits to fill before it is processed.</summary>
    [Range(typeof(TimeSpan), "00:00:00.001", "00:10:00")] public TimeSpan BatchTimeLimit { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>Batches processed at once (different adapters in parallel; one adapter is serialised).</summary>
    [Range(1, 64)] public int BatchConcurrencyLimit { get; set; } = 2;

    /// <summary>Most sample ids one request may name.</summary>
    [Range(1, 1_000_000)] public int MaxSampleIdsPerRequest { get; set; } = 10_000;

    /// <summary>Largest request body accepted, in bytes (default 1 MiB). Checked before the body is deserialised: a
    /// larger message is moved to <c>eraser-unlearning-requested_skipped</c> with the reason in its <c>MT-Reason</c>
    /// header, and an <c>InvalidRequest</c> failure is published when its requestId and adapterId can be read.</summary>
    [Range(1024, 128 << 20)] public int MaxMessageBytes { get; set; } = 1 << 20;

    /// <summary>Most characters (UTF-16 code units) of all prompts and responses of one request's text
    /// <c>replacements</c> together; a larger request fails with <c>InvalidRequest</c>.</summary>
    [Range(1, 1 << 30)] public int MaxReplacementTextLength { get; set; } = EraserWorker.Contracts.RequestValidation.DefaultMaxReplacementTextLength;

    /// <summary>Base models (with tokenizer and LoRA runtime) kept loaded for text replacements, least recently used
    /// evicted. A model holds its weights in float32 on the compute device.</summary>
    [Range(1, 100)] public int MaxWarmModels { get; set; } = 1;

    /// <summary>Adapters whose base and curvature rows stay in memory (least recently used are evicted).</summary>
    [Range(1, 1000)] public int MaxWarmAdapters { get; set; } = 4;

    /// <summary>Local folder for downloaded bases, caches, replacement sets and versions being written.</summary>
    [Required] public string WorkDirectory { get; set; } = Path.Combine(Path.GetTempPath(), "eraser-worker");

    /// <summary>How long to wait for another writer's claim on the next version number (it is writing that version now)
    /// before writing under the next free number instead: a claim older than this is taken to be left by a writer that
    /// died (killed, OOM) mid-write. Only latency depends on it: the head's ETag keeps the history linear either way.</summary>
    [Range(typeof(TimeSpan), "00:00:00", "01:00:00")] public TimeSpan ClaimWait { get; set; } = TimeSpan.FromSeconds(20);

    /// <summary>Retries of a batch that failed for a transient reason (storage or broker unreachable), with exponential
    /// back-off up to <see cref="RetryMaxInterval"/>. After the last one every request of the batch is answered with
    /// <c>RetriesExhausted</c> (or <c>InternalError</c> for an unexpected error) instead of being left on a dead-letter queue.</summary>
    [Range(0, 50)] public int Retries { get; set; } = 8;

    /// <summary>Longest wait between two retries of a batch.</summary>
    [Range(typeof(TimeSpan), "00:00:00.010", "00:10:00")] public TimeSpan RetryMaxInterval { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Attempts to publish a version when other replicas keep winning the head.</summary>
    [Range(1, 1000)] public int MaxHeadAttempts { get; set; } = 50;

    /// <summary>Solver of every update (SPEC §1): <c>Auto</c>, <c>Direct</c>, <c>Cg</c> or <c>LlmEraser</c>.</summary>
    public SolverKind Solver { get; set; } = SolverKind.Auto;

    /// <summary>Damping δ added to the cache's l2; unset: the SPEC §1 rule.</summary>
    public double? Damping { get; set; }

    /// <summary>Relative residual a solve must reach to become a version, in (0, 1); unset: 1e-6 (Float32) or 1e-10
    /// (Float64). A solve above it publishes <c>NumericalFailure</c> for its requests and writes no version.</summary>
    public double? Tolerance { get; set; }

    /// <summary>Iteration cap of the cg solver (≥ 1).</summary>
    public int MaxIterations { get; set; } = new SolverOptions().MaxIterations;

    /// <summary>The solver settings of every update.</summary>
    public SolverOptions SolverOptions() => new() { Solver = Solver, Damping = Damping, Tolerance = Tolerance, MaxIterations = MaxIterations };
}
