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
    TextReplacementSets textReplacements,
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
        var reemittedIn = new SortedSet<int>();
        foreach (var item in batch)
        {
            if (!seen.Add(item.Request.RequestId))
                continue; // the same request twice in one batch is answered once
            if (current.RequestHistory.TryGetValue(item.Request.RequestId, out int appliedIn))
            {
                completed.Add(await ReemitAsync(item.Request, appliedIn, cancellation));
                reemittedIn.Add(appliedIn);
            }
            else
            {
                pending.Add(item);
            }
        }
        // At-least-once announcement: a redelivered request means its first delivery was never acknowledged, so the
        // worker that applied it may have died between moving the head and publishing. Announce its version again
        // (consumers dedupe by adapterId and version).
        var reannounced = new List<AdapterVersionPublished>();
        foreach (int v in reemittedIn)
            reannounced.Add(await AnnouncementAsync(adapterId, v, cancellation));

        var edits = current.EditSet;
        var accepted = new List<(UnlearningRequested Request, DateTimeOffset? SentAt)>();
        foreach (var item in pending)
        {
            // Text replacements become a stored replacement set first; from then on the request has its replacementsUri.
            var (request, problem) = await textReplacements.ResolveAsync(warm, item.Request, cancellation);
            problem ??= await CheckAsync(warm, request, cancellation);
            if (problem is not null)
            {
                failed.Add(problem);
                continue;
            }
            edits = Apply(edits, request);
            accepted.Add((request, item.SentAt));
        }
        if (accepted.Count == 0)
            return new BatchOutcome(completed, failed, null, reannounced);
        // Sets of requests applied in earlier versions are replayed too; open those this process has not seen.
        await ReplayedReplacementSets.EnsureLoadedAsync(store, warm, edits, cancellation);

        var solverOptions = options.Value.SolverOptions();
        UnlearningUpdate update;
        try
        {
            update = warm.Engine.Compute(edits, warm.Replacements, solverOptions, null, cancellation);
        }
        catch (Exception e) when (SolveFailureCode(e) is { } code)
        {
            logger.LogError(e, "Solve failed for {AdapterId}: {Code}", adapterId, code);
            if (e is UnlearningException { Report: { } rejected })
                metrics.SolveRejected(rejected.Solver);
            // A bad request fails alone (SPEC §3): find the requests that fail on their own, solve again without them.
            List<(UnlearningRequested Request, DateTimeOffset? SentAt)> alone =
                accepted.Count == 1 ? [] : Isolate(warm, current.EditSet, accepted, solverOptions, failed, cancellation);
            if (alone.Count == 0 || alone.Count == accepted.Count)
            {
                failed.AddRange(accepted.Where(a => !failed.Any(f => f.RequestId == a.Request.RequestId)).Select(a => Failure(a.Request, code, e.Message)));
                return new BatchOutcome(completed, failed, null, reannounced);
            }
            logger.LogWarning("{Failed} request(s) of the batch for {AdapterId} fail alone; solving the other {Count} again",
                accepted.Count - alone.Count, adapterId, alone.Count);
            accepted = alone;
            edits = accepted.Aggregate(current.EditSet, (set, a) => Apply(set, a.Request));
            try
            {
                update = warm.Engine.Compute(edits, warm.Replacements, solverOptions, null, cancellation);
            }
            catch (Exception again) when (SolveFailureCode(again) is { } code2)
            {
                failed.AddRange(accepted.Select(a => Failure(a.Request, code2, again.Message)));
                return new BatchOutcome(completed, failed, null, reannounced);
            }
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
            var files = Directory.EnumerateFiles(local).ToDictionary(f => Path.GetFileName(f),
                f => new ManifestFile(FileHash.Sha256OfFile(f), new FileInfo(f).Length));
            for (int attempt = 1; ; attempt++)
            {
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
                    Files = files,
                };
                await File.WriteAllTextAsync(Path.Combine(local, AdapterStore.ManifestFileName), JsonSerializer.Serialize(manifest, ManifestJson), cancellation);
                try
                {
                    written = await store.WriteVersionAsync(adapterId, version, local, cancellation);
                    break;
                }
                catch (VersionExistsException)
                {
                    await HelpAdvanceAsync(adapterId, head, version, cancellation);
                    return null;
                }
                catch (VersionConflictException e) when (attempt < 3)
                {
                    // Another writer holds a live claim on this number: a replica writing it right now, or one killed
                    // while writing it (its claim would block the number for Eraser:Storage:VersionClaimTimeout, 10 min).
                    if (await WaitForClaimAsync(adapterId, version, cancellation) is not { } next)
                        return null; // the other writer finished or gave up: recompute on the new head
                    // Still claimed after Eraser:Worker:ClaimWait: its writer is presumably dead. Write under the next
                    // number nobody has used, with the same parent; the head's ETag still decides what is published.
                    logger.LogWarning("Version {Version} of {AdapterId} stays claimed by another writer ({Reason}); writing version {Next} instead",
                        version, adapterId, e.Message, next);
                    version = next;
                }
            }
        }
        finally
        {
            if (Directory.Exists(local))
                Directory.Delete(local, recursive: true);
        }

        // Our If-Match can fail although the version is published: another replica found our version written and moved
        // the head to it for us (HelpAdvanceAsync). The version is ours (created with If-None-Match), so announce it —
        // if the current head really applies our requests in our version (the head may also have moved past an orphan
        // of ours, written under another number while a dead writer's claim blocked the next one: then recompute).
        if (!await store.TryAdvanceHeadAsync(adapterId, version, head.ETag, cancellation)
            && !await AppliedInAsync(adapterId, accepted, version, cancellation))
            return null;

        metrics.VersionPublished();
        var now = clock.GetUtcNow();
        foreach (var a in accepted)
            completed.Add(new UnlearningCompleted(a.Request.RequestId, adapterId, version, written.Uri, written.Sha256, now, solver));
        logger.LogInformation("Published {AdapterId} version {Version}: {Requests} request(s), {Solver} {Iterations} it, residual {Residual:E1}, {Seconds:F3} s",
            adapterId, version, accepted.Count, solver.Name, solver.Iterations, solver.RelativeResidual, solver.Seconds);
        return new BatchOutcome(completed, failed,
            new AdapterVersionPublished(adapterId, version, written.Uri, written.Sha256, accepted.Select(a => a.Request.RequestId).ToList()), reannounced);
    }

    /// <summary>Waits while another writer's claim on <paramref name="version"/> is younger than
    /// <see cref="WorkerOptions.ClaimWait"/>. Null when the claim went away or the version was completed meanwhile
    /// (recompute); else the next free version number (the claim is stale: its writer presumably died).</summary>
    private async Task<int?> WaitForClaimAsync(string adapterId, int version, CancellationToken cancellation)
    {
        string claim = AdapterStore.AdapterPrefix(adapterId) + "claims/" + version.ToString("D6", System.Globalization.CultureInfo.InvariantCulture) + ".json";
        while (true)
        {
            if (await store.ReadManifestAsync(adapterId, version, cancellation) is not null)
                return null;
            using var buffer = new MemoryStream();
            if (await store.Blobs.DownloadAsync(claim, buffer, cancellation) is null)
                return null;
            DateTimeOffset claimedAt;
            try
            {
                claimedAt = System.Text.Json.Nodes.JsonNode.Parse(buffer.ToArray())?["claimedAt"]?.GetValue<DateTimeOffset>() ?? DateTimeOffset.MinValue;
            }
            catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
            {
                claimedAt = DateTimeOffset.MinValue; // unreadable: as good as stale
            }
            var left = claimedAt + options.Value.ClaimWait - clock.GetUtcNow();
            if (left <= TimeSpan.Zero)
                return await store.NextFreeVersionAsync(adapterId, cancellation);
            await Task.Delay(left < TimeSpan.FromMilliseconds(500) ? left : TimeSpan.FromMilliseconds(500), clock, cancellation);
        }
    }

    /// <summary>True when the current head's history says every one of <paramref name="accepted"/> was applied in
    /// <paramref name="version"/>.</summary>
    private async Task<bool> AppliedInAsync(string adapterId, IReadOnlyList<(UnlearningRequested Request, DateTimeOffset? SentAt)> accepted,
        int version, CancellationToken cancellation)
    {
        var head = await store.GetHeadAsync(adapterId, cancellation);
        if (head is null || head.Version < version)
            return false;
        var manifest = await ReadManifestAsync(adapterId, head.Version, cancellation);
        return accepted.All(a => manifest.RequestHistory.TryGetValue(a.Request.RequestId, out int v) && v == version);
    }

    /// <summary>The batch failed to solve: solves each request alone on top of <paramref name="baseEdits"/>; those that
    /// fail alone are added to <paramref name="failed"/>, the others returned.</summary>
    private static List<(UnlearningRequested Request, DateTimeOffset? SentAt)> Isolate(WarmAdapter warm, EditSet baseEdits,
        IReadOnlyList<(UnlearningRequested Request, DateTimeOffset? SentAt)> accepted, SolverOptions solverOptions,
        List<UnlearningFailed> failed, CancellationToken cancellation)
    {
        var ok = new List<(UnlearningRequested Request, DateTimeOffset? SentAt)>();
        foreach (var item in accepted)
        {
            try
            {
                warm.Engine.Compute(Apply(baseEdits, item.Request), warm.Replacements, solverOptions, null, cancellation);
                ok.Add(item);
            }
            catch (Exception e) when (SolveFailureCode(e) is { } code)
            {
                failed.Add(Failure(item.Request, code, e.Message));
            }
        }
        return ok;
    }

    private static EditSet Apply(EditSet edits, UnlearningRequested request) =>
        request.Task == UnlearningTasks.Remove ? edits.Remove(request.SampleIds) : edits.Replace(request.SampleIds, request.ReplacementsUri!);

    /// <summary>The failure code of a solve that cannot succeed for these edits: the solver's own refusal (including a solve
    /// that did not meet its tolerance), or unusable rows (non-finite or unreadable cache or replacement data, SPEC §2);
    /// null for anything else.</summary>
    private static string? SolveFailureCode(Exception e) => InputValidation.CodeOf(e);

    /// <summary>Another writer finished version <paramref name="version"/> on top of our head but has not moved the head
    /// (it may have crashed): move it for them, so a dead writer never blocks the adapter.</summary>
    private async Task HelpAdvanceAsync(string adapterId, AdapterHead head, int version, CancellationToken cancellation)
    {
        var existing = await ReadManifestAsync(adapterId, version, cancellation);
        if (existing.ParentVersion == head.Version)
            await store.TryAdvanceHeadAsync(adapterId, version, head.ETag, cancellation);
    }

    /// <summary>The request's samples and replacement set checked as <c>eraser unlearn</c> checks them
    /// (<see cref="InputValidation"/>): known ids, a set of the cache's parameter layout with rows for every id, and
    /// finite values in the rows the request brings in — read now, while the request can still fail alone.</summary>
    private async Task<UnlearningFailed?> CheckAsync(WarmAdapter warm, UnlearningRequested request, CancellationToken cancellation)
    {
        var cache = warm.Engine.Cache;
        if (request.Task != UnlearningTasks.Remove && string.IsNullOrEmpty(request.ReplacementsUri))
            return Failure(request, FailureCodes.InvalidRequest, $"Task '{request.Task}' needs a replacementsUri.");
        try
        {
            if (request.Task != UnlearningTasks.Remove)
            {
                string label = $"'{request.ReplacementsUri}'";
                var set = await OpenReplacementsAsync(warm, request.ReplacementsUri!, cancellation);
                if (set is null)
                    return Failure(request, FailureCodes.ReplacementMissing, $"No replacement set at {label}.");
                InputValidation.SamplesKnown(request.SampleIds, cache);
                InputValidation.ReplacementRowsPresent(request.SampleIds, set, label);
                InputValidation.RowsFinite(set, request.SampleIds, $"Replacement set {label}");
            }
            else
            {
                InputValidation.SamplesKnown(request.SampleIds, cache);
            }
        }
        catch (UnlearningException e)
        {
            return Failure(request, e.Code, e.Message);
        }
        return null;
    }

    /// <summary>The request's replacement set, downloaded and opened once per warm adapter and checked against the cache's
    /// parameter layout (<c>InvalidCache</c> otherwise); null when the store has no set at that URI.</summary>
    private async Task<GradientCache?> OpenReplacementsAsync(WarmAdapter warm, string uri, CancellationToken cancellation)
    {
        if (warm.TryGetReplacements(uri, out var set))
            return set;
        var directory = Path.Combine(warm.Directory, "replacements", Guid.NewGuid().ToString("N"));
        try
        {
            await store.DownloadReplacementsAsync(warm.AdapterId, uri, directory, cancellation);
            set = InputValidation.OpenCache(directory, $"replacement set '{uri}'");
        }
        catch (ReplacementsNotFoundException)
        {
            TryDelete(directory);
            return null;
        }
        catch (ArgumentException e)
        {
            TryDelete(directory);
            throw new UnlearningException(FailureCodes.InvalidRequest, $"Replacement set '{uri}' cannot be used: {e.Message}", e);
        }
        catch (UnlearningException)
        {
            TryDelete(directory);
            throw;
        }
        try
        {
            InputValidation.ReplacementSetMatchesCache(set, warm.Engine.Cache, $"'{uri}'");
        }
        catch
        {
            set.Dispose();
            TryDelete(directory);
            throw;
        }
        warm.AddReplacements(uri, set);
        return set;
    }

    private static void TryDelete(string directory)
    {
        try
        {
            if (Directory.Exists(directory))
                Directory.Delete(directory, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    private async Task<UnlearningCompleted> ReemitAsync(UnlearningRequested request, int version, CancellationToken cancellation)
    {
        var manifest = await ReadManifestAsync(request.AdapterId, version, cancellation);
        var reference = await store.GetVersionAsync(request.AdapterId, version, cancellation)
            ?? throw new InvalidDataException($"Version {version} of '{request.AdapterId}' is listed in the history but incomplete.");
        return new UnlearningCompleted(request.RequestId, request.AdapterId, version, reference.Uri, reference.Sha256,
            manifest.CreatedAt, manifest.Solver ?? new SolverSummary("none", 0, 0, 0, 0));
    }

    /// <summary>The <see cref="AdapterVersionPublished"/> of an existing version, rebuilt from its manifest.</summary>
    private async Task<AdapterVersionPublished> AnnouncementAsync(string adapterId, int version, CancellationToken cancellation)
    {
        var manifest = await ReadManifestAsync(adapterId, version, cancellation);
        var reference = await store.GetVersionAsync(adapterId, version, cancellation)
            ?? throw new InvalidDataException($"Version {version} of '{adapterId}' is listed in the history but incomplete.");
        return new AdapterVersionPublished(adapterId, version, reference.Uri, reference.Sha256, manifest.Requests.Select(r => r.RequestId).ToList());
    }

    private async Task<VersionManifest> ReadManifestAsync(string adapterId, int version, CancellationToken cancellation)
    {
        var json = await store.ReadManifestAsync(adapterId, version, cancellation)
            ?? throw new InvalidDataException($"Version {version} of '{adapterId}' has no manifest.");
        return VersionManifest.Parse(adapterId, version, json);
    }

    private static readonly JsonSerializerOptions ManifestJson = new(JsonSerializerDefaults.Web) { WriteIndented = true };

    /// <summary>The message without the worker's local work folder (failure events go to other systems).</summary>
    public string ScrubPaths(string message)
    {
        string work = Path.TrimEndingDirectorySeparator(Path.GetFullPath(options.Value.WorkDirectory));
        return message.Replace(work, "<work>", StringComparison.Ordinal);
    }

    /// <summary>A failure event; the ids are echoed as received but cut to their maximum lengths (128 and 200
    /// characters), so an oversized hostile id never grows the event.</summary>
    public static UnlearningFailed Failure(UnlearningRequested request, string code, string message) =>
        new(Cut(request.RequestId, RequestValidation.MaxRequestIdLength), Cut(request.AdapterId, RequestValidation.MaxAdapterIdLength), code, message);

    private static string Cut(string? value, int max) => value is null ? "" : value.Length <= max ? value : value[..max];

    private static string Quote(string id) => $"'{(id.Length > 64 ? id[..64] + "…" : id)}'";
}
