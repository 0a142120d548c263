using EraserWorker.Contracts;
using EraserWorker.Hosting;
using EraserWorker.Observability;
using EraserWorker.Unlearning;
using MassTransit;
using Microsoft.Extensions.Options;

namespace EraserWorker.Messaging;

/// <summary>
/// Consumes batches of <see cref="UnlearningRequested"/> (grouped by adapter by the definition). Each request is
/// validated alone; a bad one fails with its code and never takes its batch-mates down. Events are published before
/// the batch is acknowledged, so a crash anywhere leads to redelivery, which re-emits completions, never re-applies.
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
        var failures = new List<UnlearningFailed>();
        foreach (var item in context.Message)
        {
            var request = item.Message;
            metrics.RequestReceived(request.Task);
            var problems = RequestValidation.Validate(request, options.Value.MaxSampleIdsPerRequest);
            if (problems.Count > 0)
                failures.Add(AdapterUnlearningService.Failure(request, FailureCodes.InvalidRequest, string.Join(" ", problems)));
            else
                valid.Add((request, item.SentTime is { } sent ? new DateTimeOffset(sent, TimeSpan.Zero) : null));
        }

        var byAdapter = valid.GroupBy(v => v.Request.AdapterId, StringComparer.Ordinal);
        var completed = new List<UnlearningCompleted>();
        var published = new List<AdapterVersionPublished>();
        foreach (var group in byAdapter)
        {
            using var scope = logger.BeginScope("adapter {AdapterId}", group.Key);
            var outcome = await service.ApplyAsync(group.Key, group.ToList(), context.CancellationToken);
            completed.AddRange(outcome.Completed);
            failures.AddRange(outcome.Failed);
            if (outcome.Published is not null)
                published.Add(outcome.Published);
        }

        var sentAt = valid.ToDictionary(v => v.Request.RequestId, v => v.SentAt, StringComparer.Ordinal);
        foreach (var failure in failures)
        {
            var task = context.Message.FirstOrDefault(m => m.Message.RequestId == failure.RequestId)?.Message.Task;
            logger.LogWarning("Request {RequestId} for {AdapterId} failed: {Code}: {Reason}", failure.RequestId, failure.AdapterId, failure.Code, failure.Message);
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
}
