using EraserWorker.Contracts;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Influence;
using EraserWorker.Hosting;
using EraserWorker.Observability;
using EraserWorker.Storage;
using EraserWorker.Unlearning;
using MassTransit;
using Microsoft.Extensions.Options;

namespace EraserWorker.Messaging;

/// <summary>
/// Consumes batches of <see cref="UnlearningRequested"/> (grouped by adapter by the definition). Each request is
/// validated alone; a bad one fails with its code and never takes its batch-mates down. Events are published before
/// the batch is acknowledged, so a crash anywhere leads to redelivery, which re-emits completions and re-announces their
/// versions (at least once), never re-applies.
/// </summary>
public sealed class UnlearningRequestedConsumer(
    AdapterUnlearningService service,
    EraserMetrics metrics,
    IOptions<WorkerOptions> options,
    TimeProvider clock,
    ILogger<UnlearningRequestedConsumer> logger) : IConsumer<Batch<UnlearningRequested>>
{
    public async Task Consume(ConsumeContext<Batch<UnlearningRequested>> context)
    {
        using var inFlight = metrics.TrackBatchInFlight();
        metrics.ObserveBatch(context.Message.Length);

        var valid = new List<(UnlearningRequested Request, DateTimeOffset? SentAt)>();
        // Requests are validated alone; a bad one never fails its batch-mates.
        var failures = new List<UnlearningFailed>();
        foreach (var item in context.Message)
        {
            var request = item.Message;
            metrics.RequestReceived(request.Task);
            var problems = RequestValidation.Validate(request, options.Value.MaxSampleIdsPerRequest, options.Value.MaxReplacementTextLength);
            if (problems.Count == 0 && !AdapterStore.IsStorableAdapterId(request.AdapterId))
                problems = [$"adapterId '{request.AdapterId}' uses a segment reserved by the store ({string.Join(", ", AdapterStore.ReservedSegments)}) after its first segment."];
            if (problems.Count > 0)
                failures.Add(AdapterUnlearningService.Failure(request, FailureCodes.InvalidRequest, string.Join(" ", problems)));
            else
                valid.Add((request, PublishedAt(item)));
        }

        var byAdapter = valid.GroupBy(v => v.Request.AdapterId, StringComparer.Ordinal);
        var completed = new List<UnlearningCompleted>();
        var published = new List<AdapterVersionPublished>();
        foreach (var group in byAdapter)
        {
            using var scope = logger.BeginScope("adapter {AdapterId}", group.Key);
            BatchOutcome outcome;
            try
            {
                outcome = await service.ApplyAsync(group.Key, group.ToList(), context.CancellationToken);
            }
            catch (Exception e) when (PermanentFailureCode(e) is { } code)
            {
                // Retrying cannot help (the adapter's stored data is unusable, or the request cannot be stored), and
                // it must not take the other adapters' requests of this batch down with it: these requests fail alone.
                logger.LogError(e, "Requests for {AdapterId} cannot be applied: {Code}", group.Key, code);
                outcome = new BatchOutcome([], group.DistinctBy(v => v.Request.RequestId, StringComparer.Ordinal)
                    .Select(v => AdapterUnlearningService.Failure(v.Request, code, e.Message)).ToList(), null);
            }
            // Anything else (storage or broker unreachable, head conflicts) propagates: the batch is retried with backoff.
            completed.AddRange(outcome.Completed);
            failures.AddRange(outcome.Failed);
            if (outcome.Published is not null)
                published.Add(outcome.Published);
            foreach (var again in outcome.Reannounced ?? [])
            {
                logger.LogInformation("Announcing {AdapterId} version {Version} again: redelivered requests were applied in it", again.AdapterId, again.Version);
                published.Add(again);
            }
        }

        // A request delivered twice in one batch (at-least-once delivery) appears twice in `valid`.
        var sentAt = valid.DistinctBy(v => v.Request.RequestId, StringComparer.Ordinal).ToDictionary(v => v.Request.RequestId, v => v.SentAt, StringComparer.Ordinal);
        foreach (var failure in failures.Select(f => f with { Message = service.ScrubPaths(f.Message) }))
        {
            var task = context.Message.FirstOrDefault(m => m.Message.RequestId == failure.RequestId)?.Message.Task;
            logger.LogWarning("Request {RequestId} for {AdapterId} failed: {Code}: {Reason}", LogText.Safe(failure.RequestId), LogText.Safe(failure.AdapterId),
                failure.Code, LogText.Safe(failure.Message, 1000));
            metrics.RequestFailed(task, failure.Code);
            await context.Publish(failure, context.CancellationToken);
        }
        foreach (var version in published)
            await context.Publish(version, context.CancellationToken);
        var now = clock.GetUtcNow();
        foreach (var done in completed)
        {
            var task = context.Message.FirstOrDefault(m => m.Message.RequestId == done.RequestId)?.Message.Task;
            metrics.RequestCompleted(task, sentAt.TryGetValue(done.RequestId, out var at) && at is not null ? now - at.Value : null);
            logger.LogInformation("Request {RequestId} for {AdapterId} completed in version {Version}", done.RequestId, done.AdapterId, done.Version);
            await context.Publish(done, context.CancellationToken);
        }
        if (completed.Count > 0)
            metrics.MarkBatchCompleted(now);
    }

    /// <summary>The failure code of an error that retrying cannot cure — the stored adapter, cache or replacement set is
    /// malformed or does not match (SPEC §2's rejections: <c>InvalidCache</c>), the solver refused the problem (its code),
    /// or an argument was refused (<c>InvalidRequest</c>: deterministic, it would fail the same way every time) — else
    /// null: transient (storage or broker trouble, head conflicts), the batch is retried and, when the retries run out,
    /// dead-lettered to <c>_error</c>.</summary>
    internal static string? PermanentFailureCode(Exception e) => e switch
    {
        UnlearningException u => u.Code,
        GradientCacheException or InvalidDataException or FileNotFoundException or DirectoryNotFoundException => FailureCodes.InvalidCache,
        ArgumentException => FailureCodes.InvalidRequest,
        _ => null,
    };

    /// <summary>When the request was published: the publisher's sent time (MassTransit envelope, or the AMQP
    /// timestamp property), else when this worker received it — so latency is never undercounted silently
    /// for a client that sets neither, only measured from arrival.</summary>
    private DateTimeOffset PublishedAt(ConsumeContext<UnlearningRequested> item) =>
        item.SentTime is { } sent
            ? new DateTimeOffset(DateTime.SpecifyKind(sent, DateTimeKind.Utc))
            : clock.GetUtcNow() - item.ReceiveContext.ElapsedTime;
}
