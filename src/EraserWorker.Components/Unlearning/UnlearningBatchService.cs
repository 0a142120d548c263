using EraserWorker.Components.Observability;
using EraserWorker.Components.Warm;
using EraserWorker.Contracts;
using EraserWorker.Core.Influence;
using EraserWorker.Storage;
using EraserWorker.Storage.Manifests;
using EraserWorker.Storage.Versions;
using Microsoft.Extensions.Options;

namespace EraserWorker.Components.Unlearning;

/// <summary>
/// The path of one batch of <see cref="UnlearningRequested"/>, top to bottom; each step is a call into the room that owns it:
/// <list type="number">
/// <item>validation of each request alone (<see cref="RequestValidation"/>): a bad one fails alone;</item>
/// <item>the batch per adapter, one solve each; under the adapter's gate, on its current head
/// (<see cref="AdapterStore.GetHeadAsync"/>, <see cref="AdapterStore.ReadManifestAsync"/>);</item>
/// <item>requests already applied are answered again (<see cref="Redeliveries"/>), never re-applied;</item>
/// <item>text corrections become stored replacement sets (<see cref="TextReplacementSets"/>), each new request is checked
/// (<see cref="RequestChecks"/>);</item>
/// <item>the cumulative edit set: the head's edits plus the batch's (<see cref="EditSets"/>), earlier versions' sets opened
/// (<see cref="ReplacementSetLoader"/>);</item>
/// <item>the solve from the base, accepted only at its tolerance (<see cref="UpdateSolver"/>);</item>
/// <item>the version's files written from the base adapter, then published as one call — version write, head move, request
/// markers (<see cref="AdapterStore.PublishVersionAsync"/>); when another replica moved the head first, the batch is
/// recomputed on the new head;</item>
/// <item>the events, which the consumer publishes before acknowledging the batch.</item>
/// </list>
/// </summary>
public sealed class UnlearningBatchService(
    AdapterStore store,
    WarmEngines engines,
    TextReplacementSets textReplacements,
    RequestChecks checks,
    ReplacementSetLoader replacementSets,
    UpdateSolver solver,
    Redeliveries redeliveries,
    IOptions<WorkerOptions> options,
    EraserMetrics metrics,
    TimeProvider clock,
    ILogger<UnlearningBatchService> logger)
{
    /// <param name="lastAttempt">True on the batch's last retry: requests of an adapter that still fails for a transient
    /// reason are then answered (<c>RetriesExhausted</c>, or <c>InternalError</c> for an unexpected error) instead of
    /// retried again. Otherwise such a failure is rethrown after the other adapters are done (MassTransit retries the batch;
    /// what was applied meanwhile is found applied and answered then).</param>
    public async Task<BatchOutcome> ApplyAsync(IReadOnlyList<PendingRequest> batch, bool lastAttempt, CancellationToken cancellation)
    {
        // 1. Each request is validated alone.
        var outcome = BatchOutcome.Empty;
        var valid = new List<PendingRequest>();
        foreach (var item in batch)
        {
            if (Validate(item.Request) is { } problem)
                outcome = outcome.Add(BatchOutcome.Failures([Failures.Of(item.Request, FailureCodes.InvalidRequest, problem)]));
            else
                valid.Add(item);
        }
        // 2. One solve per adapter; an adapter whose data is unusable, or whose storage is down, holds up only its requests.
        System.Runtime.ExceptionServices.ExceptionDispatchInfo? transient = null;
        foreach (var group in valid.GroupBy(v => v.Request.AdapterId, StringComparer.Ordinal))
        {
            using var scope = logger.BeginScope("adapter {AdapterId}", group.Key);
            var requests = group.DistinctBy(r => r.Request.RequestId, StringComparer.Ordinal).ToList();
            try
            {
                outcome = outcome.Add(await ApplyToAdapterAsync(group.Key, requests, cancellation));
            }
            catch (Exception e) when (Failures.PermanentCode(e) is { } code)
            {
                logger.LogError(e, "Requests for {AdapterId} cannot be applied: {Code}", group.Key, code);
                outcome = outcome.Add(BatchOutcome.Failures(requests.Select(r => Failures.Of(r.Request, code, e))));
            }
            catch (Exception e) when (e is not OperationCanceledException || !cancellation.IsCancellationRequested)
            {
                if (!lastAttempt)
                {
                    logger.LogWarning(e, "Requests for {AdapterId} hit a transient failure; the batch will be retried", group.Key);
                    transient ??= System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e);
                    continue;
                }
                string code = Failures.GiveUpCode(e);
                logger.LogError(e, "Giving up {Count} request(s) for {AdapterId} after the last retry: {Code}", requests.Count, group.Key, code);
                outcome = outcome.Add(BatchOutcome.Failures(requests.Select(r => Failures.Of(r.Request, code, code == FailureCodes.RetriesExhausted
                    ? $"Given up after the last retry of a transient failure ({e.GetType().Name}: {e.Message}); resubmit later."
                    : $"The worker failed unexpectedly ({e.GetType().Name}: {e.Message})."))));
            }
        }
        transient?.Throw();
        return outcome with { Failed = outcome.Failed.Select(f => f with { Message = ScrubPaths(f.Message) }).ToList() };
    }

    private string? Validate(UnlearningRequested request)
    {
        var problems = RequestValidation.Validate(request, options.Value.MaxSampleIdsPerRequest, options.Value.MaxReplacementTextLength);
        if (problems.Count > 0)
            return string.Join(" ", problems);
        return AdapterStore.IsStorableAdapterId(request.AdapterId)
            ? null
            : $"adapterId '{request.AdapterId}' uses a segment reserved by the store ({string.Join(", ", AdapterStore.ReservedSegments)}) after its first segment.";
    }

    private async Task<BatchOutcome> ApplyToAdapterAsync(string adapterId, IReadOnlyList<PendingRequest> requests, CancellationToken cancellation)
    {
        var warm = await engines.GetAsync(adapterId, cancellation);
        if (warm is null)
            return BatchOutcome.Failures(requests.Select(r => Failures.Of(r.Request, FailureCodes.UnknownAdapter, $"Adapter '{adapterId}' is not registered.")));
        await warm.Gate.WaitAsync(cancellation);
        try
        {
            for (int attempt = 1; ; attempt++)
            {
                if (await TryApplyOnHeadAsync(warm, requests, cancellation) is { } outcome)
                    return outcome;
                metrics.HeadConflict();
                if (attempt >= options.Value.MaxHeadAttempts)
                    throw new InvalidOperationException($"Gave up publishing a version of '{adapterId}' after {attempt} head conflicts.");
                logger.LogInformation("Head of {AdapterId} moved under us (attempt {Attempt}); recomputing", adapterId, attempt);
                await Task.Delay(TimeSpan.FromMilliseconds(Random.Shared.Next(10, 50 * Math.Min(attempt, 10))), cancellation);
            }
        }
        finally
        {
            warm.Gate.Release();
        }
    }

    /// <summary>One attempt on the current head; null when another writer moved the head first (recompute).</summary>
    private async Task<BatchOutcome?> TryApplyOnHeadAsync(WarmAdapter warm, IReadOnlyList<PendingRequest> requests, CancellationToken cancellation)
    {
        string adapterId = warm.AdapterId;
        var head = await store.GetHeadAsync(adapterId, cancellation) ?? throw new InvalidOperationException($"The head of '{adapterId}' disappeared.");
        var headManifest = await store.ReadManifestAsync(adapterId, head.Version, cancellation)
            ?? throw new InvalidDataException($"Version {head.Version} of '{adapterId}' has no manifest.");

        // 3. Already applied: answered again, not re-applied.
        var applied = await store.FindAppliedAsync(headManifest, requests.Select(r => r.Request.RequestId).ToList(), cancellation);
        var outcome = await redeliveries.ReemitAsync(
            requests.Where(r => applied.ContainsKey(r.Request.RequestId)).Select(r => (r.Request, applied[r.Request.RequestId])).ToList(), headManifest, cancellation);

        // 4. Each new request checked alone.
        var accepted = new List<PendingRequest>();
        var failed = new List<UnlearningFailed>();
        foreach (var item in requests.Where(r => !applied.ContainsKey(r.Request.RequestId)))
        {
            var (request, problem) = await textReplacements.ResolveAsync(warm, item.Request, cancellation);
            problem ??= await checks.CheckAsync(warm, request, cancellation);
            if (problem is null)
                accepted.Add(item with { Request = request });
            else
                failed.Add(problem);
        }
        outcome = outcome.Add(BatchOutcome.Failures(failed));
        if (accepted.Count == 0)
            return outcome;

        // 5. The cumulative edit set, with every replacement set it names.
        var headEdits = EditSets.From(headManifest.Edits);
        await replacementSets.EnsureLoadedAsync(warm, EditSets.Apply(headEdits, accepted), cancellation);

        // 6. One solve from the base.
        var solved = solver.Solve(warm, headEdits, accepted, options.Value.SolverOptions(), cancellation);
        outcome = outcome.Add(BatchOutcome.Failures(solved.Failed));
        if (solved.Update is not { } update)
            return outcome;

        // 7. The version: its files, then publication (version write, head move, request markers).
        var published = await PublishAsync(warm, head, headManifest, solved.Applied, EditSets.Apply(headEdits, solved.Applied), update, cancellation);
        if (published is null)
            return null;

        // 8. The events.
        var now = clock.GetUtcNow();
        var version = published.Version;
        var summary = published.Manifest.Solver!;
        logger.LogInformation("Published {AdapterId} version {Version}: {Requests} request(s), {Solver} {Iterations} it, residual {Residual:E1}, {Seconds:F3} s",
            adapterId, version.Version, solved.Applied.Count, summary.Name, summary.Iterations, summary.RelativeResidual, summary.Seconds);
        metrics.VersionPublished();
        return outcome.Add(new BatchOutcome(
            solved.Applied.Select(a => new UnlearningCompleted(a.Request.RequestId, adapterId, version.Version, version.Uri, version.Sha256, now, summary)).ToList(),
            [],
            [new AdapterVersionPublished(adapterId, version.Version, version.Uri, version.Sha256, solved.Applied.Select(a => a.Request.RequestId).ToList())]));
    }

    /// <summary>Writes the version's adapter files from the base adapter and publishes them; null when the head moved.</summary>
    private async Task<PublishResult.Published?> PublishAsync(WarmAdapter warm, AdapterHead head, AdapterManifest headManifest,
        IReadOnlyList<PendingRequest> applied, EditSet edits, UnlearningUpdate update, CancellationToken cancellation)
    {
        var local = Path.Combine(warm.Directory, "out", Guid.NewGuid().ToString("N"));
        try
        {
            warm.BaseAdapter.WriteUpdated(local, warm.Engine.Parameters, update.Theta);
            // An erased sample's text must not stay in the store: it is deleted before the version that removes it is
            // published (idempotent; a recomputation on a moved head finds it gone already).
            var removed = applied.Where(a => a.Request.Task == UnlearningTasks.Remove).SelectMany(a => a.Request.SampleIds)
                .Distinct(StringComparer.Ordinal).ToList();
            var purged = removed.Count == 0 ? null : await store.PurgeTrainingTextsAsync(warm.AdapterId, removed, cancellation);
            var report = update.Report;
            var draft = new VersionDraft(head, headManifest, local,
                applied.Select(a => new AppliedRequest(a.Request.RequestId, a.Request.Task, a.Request.SampleIds, a.Request.ReplacementsUri, a.SentAt)).ToList(),
                EditSets.ToManifest(edits),
                new SolverSummary(report.Solver, report.Iterations, report.Seconds, report.RelativeResidual, report.Damping),
                update.UpdateNorm, Purged: purged);
            return await store.PublishVersionAsync(draft, options.Value.ClaimWait, cancellation) as PublishResult.Published;
        }
        finally
        {
            LocalFolder.TryDelete(local);
        }
    }

    /// <summary>The message without the worker's local work folder (failure events go to other systems).</summary>
    private string ScrubPaths(string message)
    {
        string work = Path.TrimEndingDirectorySeparator(Path.GetFullPath(options.Value.WorkDirectory));
        return message.Replace(work, "<work>", StringComparison.Ordinal);
    }
}
