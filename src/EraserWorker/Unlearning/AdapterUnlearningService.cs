using System.Text.Json;
using EraserWorker.Contracts;
using EraserWorker.Core.Formats;
using EraserWorker.Core.Formats.Adapters;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Influence;
using EraserWorker.Hosting;
using EraserWorker.Observability;
using EraserWorker.Storage;
using Microsoft.Extensions.Options;

namespace EraserWorker.Unlearning;

/// <summary>
/// Applies one batch of validated requests for one adapter (SPEC §3–§4): already-applied requests re-emit their
/// completion; the rest are checked against the cache and their replacement sets, folded into the cumulative edit
/// set, solved once from the base, written as the next immutable version and published by moving the head with
/// its ETag. When another replica wins the head, the batch is recomputed on top of the new head.
/// </summary>
public sealed class AdapterUnlearningService(
    AdapterStore store,
    WarmEngines engines,
    IOptions<WorkerOptions> options,
    EraserMetrics metrics,
    TimeProvider clock,
    ILogger<AdapterUnlearningService> logger)
{
    public async Task<BatchOutcome> ApplyAsync(string adapterId, IReadOnlyList<(UnlearningRequested Request, DateTimeOffset? SentAt)> batch,
        CancellationToken cancellation)
    {
        var warm = await engines.GetAsync(adapterId, cancellation);
        if (warm is null)
            return new BatchOutcome([], batch.Select(r => Failure(r.Request, FailureCodes.UnknownAdapter, $"Adapter '{adapterId}' is not registered.")).ToList(), null);

        await warm.Gate.WaitAsync(cancellation);
        try
        {
            for (int attempt = 1; ; attempt++)
            {
                var outcome = await TryApplyAsync(warm, batch, cancellation);
                if (outcome is not null)
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

    /// <summary>One optimistic attempt; null when the head moved and the batch must be recomputed.</summary>
    private async Task<BatchOutcome?> TryApplyAsync(WarmAdapter warm, IReadOnlyList<(UnlearningRequested Request, DateTimeOffset? SentAt)> batch,
        CancellationToken cancellation)
    {
        string adapterId = warm.AdapterId;
        var head = await store.GetHeadAsync(adapterId, cancellation)
            ?? throw new InvalidOperationException($"The head of '{adapterId}' disappeared.");
        var current = await ReadManifestAsync(adapterId, head.Version, cancellation);

        var completed = new List<UnlearningCompleted>();
        var failed = new List<UnlearningFailed>();
        var pending = new List<(UnlearningRequested Request, DateTimeOffset? SentAt)>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var item in batch)
        {
            if (!seen.Add(item.Request.RequestId))
                continue; // the same request twice in one batch is answered once
            if (current.RequestHistory.TryGetValue(item.Request.RequestId, out int appliedIn))
                completed.Add(await ReemitAsync(item.Request, appliedIn, cancellation));
            else
                pending.Add(item);
        }

        var edits = current.EditSet;
        var accepted = new List<(UnlearningRequested Request, DateTimeOffset? SentAt)>();
        foreach (var item in pending)
        {
            var problem = await CheckAsync(warm, item.Request, cancellation);
            if (problem is not null)
            {
                failed.Add(problem);
                continue;
            }
            edits = item.Request.Task == UnlearningTasks.Remove
                ? edits.Remove(item.Request.SampleIds)
                : edits.Replace(item.Request.SampleIds, item.Request.ReplacementsUri!);
            accepted.Add(item);
        }
        if (accepted.Count == 0)
            return new BatchOutcome(completed, failed, null);

        UnlearningUpdate update;
        try
        {
            update = warm.Engine.Compute(edits, warm.Replacements, new SolverOptions { Solver = options.Value.Solver, Damping = options.Value.Damping },
                null, cancellation);
        }
        catch (UnlearningException e)
        {
            logger.LogError(e, "Solve failed for {AdapterId}: {Code}", adapterId, e.Code);
            failed.AddRange(accepted.Select(a => Failure(a.Request, e.Code, e.Message)));
            return new BatchOutcome(completed, failed, null);
        }
        metrics.ObserveSolve(update.Report.Solver, update.Report.Seconds, update.Report.Iterations, update.Report.RelativeResidual);

        int version = head.Version + 1;
        var solver = new SolverSummary(update.Report.Solver, update.Report.Iterations, update.Report.Seconds,
            update.Report.RelativeResidual, update.Report.Damping);
        var local = Path.Combine(warm.Directory, "out", Guid.NewGuid().ToString("N"));
        AdapterVersionRef written;
        try
        {
            warm.BaseAdapter.WriteUpdated(local, warm.Engine.Parameters, update.Theta);
            var history = current.RequestHistory.ToDictionary(p => p.Key, p => p.Value, StringComparer.Ordinal);
            foreach (var a in accepted)
                history[a.Request.RequestId] = version;
            var manifest = new VersionManifest
            {
                AdapterId = adapterId,
                Version = version,
                ParentVersion = head.Version,
                CreatedAt = clock.GetUtcNow(),
                Requests = accepted.Select(a => new AppliedRequest(a.Request.RequestId, a.Request.Task, a.Request.SampleIds,
                    a.Request.ReplacementsUri, a.SentAt)).ToList(),
                RequestHistory = history,
                Edits = ManifestEdits.From(edits),
                Solver = solver,
                UpdateNorm = update.UpdateNorm,
                Files = Directory.EnumerateFiles(local).ToDictionary(f => Path.GetFileName(f),
                    f => new ManifestFile(FileHash.Sha256OfFile(f), new FileInfo(f).Length)),
            };
            await File.WriteAllTextAsync(Path.Combine(local, AdapterStore.ManifestFileName), JsonSerializer.Serialize(manifest, ManifestJson), cancellation);
            try
            {
                written = await store.WriteVersionAsync(adapterId, version, local, cancellation);
            }
            catch (VersionExistsException)
            {
                await HelpAdvanceAsync(adapterId, head, version, cancellation);
                return null;
            }
        }
        finally
        {
            if (Directory.Exists(local))
                Directory.Delete(local, recursive: true);
        }

        if (!await store.TryAdvanceHeadAsync(adapterId, version, head.ETag, cancellation))
            return null;

        metrics.VersionPublished();
        var now = clock.GetUtcNow();
        foreach (var a in accepted)
            completed.Add(new UnlearningCompleted(a.Request.RequestId, adapterId, version, written.Uri, written.Sha256, now, solver));
        logger.LogInformation("Published {AdapterId} version {Version}: {Requests} request(s), {Solver} {Iterations} it, residual {Residual:E1}, {Seconds:F3} s",
            adapterId, version, accepted.Count, solver.Name, solver.Iterations, solver.RelativeResidual, solver.Seconds);
        return new BatchOutcome(completed, failed,
            new AdapterVersionPublished(adapterId, version, written.Uri, written.Sha256, accepted.Select(a => a.Request.RequestId).ToList()));
    }

    /// <summary>Another writer finished version <paramref name="version"/> on top of our head but has not moved the head
    /// (it may have crashed): move it for them, so a dead writer never blocks the adapter.</summary>
    private async Task HelpAdvanceAsync(string adapterId, AdapterHead head, int version, CancellationToken cancellation)
    {
        var existing = await ReadManifestAsync(adapterId, version, cancellation);
        if (existing.ParentVersion == head.Version)
            await store.TryAdvanceHeadAsync(adapterId, version, head.ETag, cancellation);
    }

    private async Task<UnlearningFailed?> CheckAsync(WarmAdapter warm, UnlearningRequested request, CancellationToken cancellation)
    {
        var cache = warm.Engine.Cache;
        var unknown = request.SampleIds.Where(id => !cache.TryGetRow(id, out _)).Take(5).ToList();
        if (unknown.Count > 0)
            return Failure(request, FailureCodes.UnknownSample, $"Not in the adapter's gradient cache: {string.Join(", ", unknown.Select(Quote))}.");
        if (request.Task == UnlearningTasks.Remove)
            return null;
        if (string.IsNullOrEmpty(request.ReplacementsUri))
            return Failure(request, FailureCodes.InvalidRequest, $"Task '{request.Task}' needs a replacementsUri.");

        if (!warm.TryGetReplacements(request.ReplacementsUri, out var set))
        {
            var directory = Path.Combine(warm.Directory, "replacements", Guid.NewGuid().ToString("N"));
            try
            {
                await store.DownloadReplacementsAsync(warm.AdapterId, request.ReplacementsUri, directory, cancellation);
                set = GradientCache.Open(directory);
            }
            catch (ReplacementsNotFoundException)
            {
                return Failure(request, FailureCodes.ReplacementMissing, $"No replacement set at '{request.ReplacementsUri}'.");
            }
            catch (Exception e) when (e is InvalidDataException or IOException or ArgumentException)
            {
                return Failure(request, FailureCodes.InvalidRequest, $"Replacement set '{request.ReplacementsUri}' is invalid: {e.Message}");
            }
            if (set.ParameterCount != cache.ParameterCount)
            {
                set.Dispose();
                return Failure(request, FailureCodes.InvalidRequest,
                    $"Replacement set '{request.ReplacementsUri}' has P = {set.ParameterCount}, the adapter's cache P = {cache.ParameterCount}.");
            }
            warm.AddReplacements(request.ReplacementsUri, set);
        }
        var missing = request.SampleIds.Where(id => !set.TryGetRow(id, out _)).Take(5).ToList();
        return missing.Count > 0
            ? Failure(request, FailureCodes.ReplacementMissing, $"Replacement set '{request.ReplacementsUri}' has no rows for: {string.Join(", ", missing.Select(Quote))}.")
            : null;
    }

    private async Task<UnlearningCompleted> ReemitAsync(UnlearningRequested request, int version, CancellationToken cancellation)
    {
        var manifest = await ReadManifestAsync(request.AdapterId, version, cancellation);
        var reference = await store.GetVersionAsync(request.AdapterId, version, cancellation)
            ?? throw new InvalidDataException($"Version {version} of '{request.AdapterId}' is listed in the history but incomplete.");
        return new UnlearningCompleted(request.RequestId, request.AdapterId, version, reference.Uri, reference.Sha256,
            manifest.CreatedAt, manifest.Solver ?? new SolverSummary("none", 0, 0, 0, 0));
    }

    private async Task<VersionManifest> ReadManifestAsync(string adapterId, int version, CancellationToken cancellation)
    {
        var json = await store.ReadManifestAsync(adapterId, version, cancellation)
            ?? throw new InvalidDataException($"Version {version} of '{adapterId}' has no manifest.");
        return VersionManifest.Parse(adapterId, version, json);
    }

    private static readonly JsonSerializerOptions ManifestJson = new(JsonSerializerDefaults.Web) { WriteIndented = true };

    public static UnlearningFailed Failure(UnlearningRequested request, string code, string message) =>
        new(request.RequestId ?? "", request.AdapterId ?? "", code, message);

    private static string Quote(string id) => $"'{(id.Length > 64 ? id[..64] + "…" : id)}'";
}
