namespace EraserWorker.Contracts;

/// <summary>
/// The task kinds of an <see cref="UnlearningRequested"/> message (SPEC §3), as they appear on the wire.
/// </summary>
public static class UnlearningTasks
{
    /// <summary>Instance removal: the samples are removed from the training set.</summary>
    public const string Remove = "remove";

    /// <summary>Query modification: the samples' prompts are replaced (rows from <c>replacementsUri</c>, or computed from
    /// text <c>replacements</c>).</summary>
    public const string ModifyQuery = "modifyQuery";

    /// <summary>Response correction: the samples' responses are replaced (rows from <c>replacementsUri</c>, or computed
    /// from text <c>replacements</c>).</summary>
    public const string CorrectResponse = "correctResponse";

    /// <summary>Every task, in the order of the SPEC.</summary>
    public static IReadOnlyList<string> All { get; } = [Remove, ModifyQuery, CorrectResponse];

    /// <summary>True for a known task name (case-sensitive, like the JSON Schema's enum).</summary>
    public static bool IsKnown(string? task) => task is Remove or ModifyQuery or CorrectResponse;

    /// <summary>True for the tasks that replace samples and therefore need a replacement set.</summary>
    public static bool NeedsReplacements(string? task) => task is ModifyQuery or CorrectResponse;
}

/// <summary>
/// Failure codes of <see cref="UnlearningFailed"/>. Consumers must tolerate codes they do not know
/// (new ones may be added); the first five are fixed by the SPEC.
/// </summary>
public static class FailureCodes
{
    /// <summary>The message is malformed or breaks a rule of its schema / <see cref="RequestValidation"/>
    /// (bad ids, unknown task, empty or too many sample ids, replacementsUri missing or not for this adapter), or its
    /// text <c>replacements</c> cannot be used (the adapter is not registered with a model and tokenizer, or a text does
    /// not tokenise into a usable sample).</summary>
    public const string InvalidRequest = "InvalidRequest";

    /// <summary>No adapter with this id is registered in the store.</summary>
    public const string UnknownAdapter = "UnknownAdapter";

    /// <summary>A sample id is not in the adapter's gradient cache.</summary>
    public const string UnknownSample = "UnknownSample";

    /// <summary>The replacement set named by <c>replacementsUri</c> does not exist (or is incomplete), or it
    /// lacks rows for some of the request's sample ids.</summary>
    public const string ReplacementMissing = "ReplacementMissing";

    /// <summary>The solver failed: non-finite values, not positive definite, no convergence.</summary>
    public const string NumericalFailure = "NumericalFailure";

    /// <summary>The stored cache or replacement set is unusable (unknown format, parameter-count mismatch with
    /// the adapter, duplicate ids, non-finite values, row/id mismatch) — SPEC §2's rejections. Retrying the
    /// same request cannot succeed until the data is fixed.</summary>
    public const string InvalidCache = "InvalidCache";

    /// <summary>The request was given up after repeated transient failures (storage or broker unavailable,
    /// persistent head conflicts). Resubmitting later may succeed.</summary>
    public const string RetriesExhausted = "RetriesExhausted";

    /// <summary>An unexpected error of the worker (a bug); the message carries the details.</summary>
    public const string InternalError = "InternalError";

    /// <summary>Every code this version knows.</summary>
    public static IReadOnlyList<string> All { get; } =
        [InvalidRequest, UnknownAdapter, UnknownSample, ReplacementMissing, NumericalFailure, InvalidCache, RetriesExhausted, InternalError];
}

/// <summary>
/// The names of the durable fanout exchanges of SPEC §3 (the worker declares them at start-up).
/// </summary>
public static class ExchangeNames
{
    /// <summary>Inbound: <see cref="UnlearningRequested"/>.</summary>
    public const string UnlearningRequested = "eraser.unlearning-requested";

    /// <summary>Outbound: <see cref="Contracts.UnlearningCompleted"/>.</summary>
    public const string UnlearningCompleted = "eraser.unlearning-completed";

    /// <summary>Outbound: <see cref="Contracts.UnlearningFailed"/>.</summary>
    public const string UnlearningFailed = "eraser.unlearning-failed";

    /// <summary>Outbound: <see cref="Contracts.AdapterVersionPublished"/>.</summary>
    public const string AdapterVersionPublished = "eraser.adapter-version-published";

    /// <summary>All four, inbound first.</summary>
    public static IReadOnlyList<string> All { get; } =
        [UnlearningRequested, UnlearningCompleted, UnlearningFailed, AdapterVersionPublished];
}

/// <summary>
/// Inbound request (exchange <c>eraser.unlearning-requested</c>). Wire form, camelCase:
/// <c>{requestId, adapterId, task, sampleIds, replacementsUri?, replacements?}</c>. Check it with
/// <see cref="RequestValidation.Validate"/>; schema: <c>schemas/unlearning-requested.schema.json</c>.
/// </summary>
/// <param name="RequestId">Idempotency key: 1–128 printable ASCII characters, no leading/trailing space.</param>
/// <param name="AdapterId">Hierarchical adapter id (<see cref="RequestValidation.AdapterIdPattern"/>).</param>
/// <param name="Task">One of <see cref="UnlearningTasks"/>.</param>
/// <param name="SampleIds">The training samples to remove or replace; at least one.</param>
/// <param name="ReplacementsUri">For <c>modifyQuery</c>/<c>correctResponse</c> (absent for <c>remove</c>): the
/// replacement set in the store, <c>eraser:adapters/&lt;adapterId&gt;/replacements/&lt;name&gt;</c>. Exactly one of
/// <paramref name="ReplacementsUri"/> and <paramref name="Replacements"/> is given for those tasks.</param>
/// <param name="Replacements">Extension (README, "Messages"): for <c>modifyQuery</c>/<c>correctResponse</c> on an adapter
/// registered with its base model and tokenizer, the corrected samples as text, one per sample id (the ids are exactly
/// <paramref name="SampleIds"/>); the worker computes their replacement rows itself. Absent for <c>remove</c>.</param>
public sealed record UnlearningRequested(
    string RequestId,
    string AdapterId,
    string Task,
    IReadOnlyList<string> SampleIds,
    string? ReplacementsUri = null,
    IReadOnlyList<TextReplacement>? Replacements = null);

/// <summary>
/// A corrected training sample as text (an element of <see cref="UnlearningRequested.Replacements"/>): the new prompt
/// (<c>modifyQuery</c>) or the new response (<c>correctResponse</c>) together with the other, unchanged part. The
/// worker tokenises it with the adapter's registered tokenizer exactly as training data is tokenised
/// (<c>[BOS] + prompt</c>, <c>response + [EOS]</c>) and takes the gradient of the mean response-token cross-entropy.
/// </summary>
/// <param name="Id">The training sample it replaces (one of the request's <c>sampleIds</c>).</param>
/// <param name="Prompt">The prompt text (may be empty when the tokenizer adds a BOS token).</param>
/// <param name="Response">The response text; not empty.</param>
public sealed record TextReplacement(
    string Id,
    string Prompt,
    string Response);

/// <summary>
/// Outbound completion (exchange <c>eraser.unlearning-completed</c>): the request is applied in
/// <paramref name="Version"/>. Re-emitted, identical in content, when an applied request is redelivered.
/// </summary>
/// <param name="RequestId">The request's idempotency key.</param>
/// <param name="AdapterId">The adapter.</param>
/// <param name="Version">The first adapter version that includes the request (≥ 1; 0 is the base).</param>
/// <param name="AdapterUri">Where the version's files are (a blob or <c>file:</c> URL of its folder).</param>
/// <param name="Sha256">Lowercase hex SHA-256 of the version's <c>adapter_model.safetensors</c>.</param>
/// <param name="CompletedAt">When the version was written.</param>
/// <param name="Solver">Statistics of the solve that produced the version.</param>
public sealed record UnlearningCompleted(
    string RequestId,
    string AdapterId,
    int Version,
    string AdapterUri,
    string Sha256,
    DateTimeOffset CompletedAt,
    SolverSummary Solver);

/// <summary>Solver statistics reported with every completion (SPEC §1: the damping used is always reported).</summary>
/// <param name="Name">The solver that ran: <c>direct</c>, <c>cg</c>, <c>llmeraser</c> (never <c>auto</c>).</param>
/// <param name="Iterations">Iterations (1 for a direct solve).</param>
/// <param name="Seconds">Wall-clock time of the solve.</param>
/// <param name="RelativeResidual">True relative residual ‖H'x − b‖/‖b‖.</param>
/// <param name="Damping">The damping δ that was used (λ = l2 + δ).</param>
public sealed record SolverSummary(
    string Name,
    int Iterations,
    double Seconds,
    double RelativeResidual,
    double Damping);

/// <summary>
/// Outbound failure (exchange <c>eraser.unlearning-failed</c>). A bad request fails alone.
/// </summary>
/// <param name="RequestId">The request's id as received (may be invalid when <see cref="Code"/> is
/// <see cref="FailureCodes.InvalidRequest"/>; then cut to 128 characters, or empty when absent).</param>
/// <param name="AdapterId">The adapter id as received (same caveat, cut to 200 characters).</param>
/// <param name="Code">One of <see cref="FailureCodes"/>.</param>
/// <param name="Message">Human-readable explanation.</param>
public sealed record UnlearningFailed(
    string RequestId,
    string AdapterId,
    string Code,
    string Message);

/// <summary>
/// Outbound (exchange <c>eraser.adapter-version-published</c>): the head of an adapter moved to a new version.
/// </summary>
/// <param name="AdapterId">The adapter.</param>
/// <param name="Version">The new head version (≥ 1).</param>
/// <param name="AdapterUri">Where the version's files are.</param>
/// <param name="Sha256">Lowercase hex SHA-256 of the version's <c>adapter_model.safetensors</c>.</param>
/// <param name="RequestIds">The requests first applied in this version.</param>
public sealed record AdapterVersionPublished(
    string AdapterId,
    int Version,
    string AdapterUri,
    string Sha256,
    IReadOnlyList<string> RequestIds);
