using EraserWorker.Components.Observability;
using EraserWorker.Components.Unlearning;
using EraserWorker.Contracts;
using MassTransit;

namespace EraserWorker.Components.Messaging;

/// <summary>
/// Consumes batches of <see cref="UnlearningRequested"/> and hands them to <see cref="UnlearningBatchService"/>; publishes
/// the events it returns before the batch is acknowledged, so a crash anywhere leads to redelivery, which re-emits
/// completions and re-announces their versions (at least once), never re-applies. Counts every request in the metrics.
/// </summary>
public sealed class UnlearningRequestedConsumer(
    UnlearningBatchService service,
    Microsoft.Extensions.Options.IOptions<WorkerOptions> options,
    EraserMetrics metrics,
    TimeProvider clock,
    ILogger<UnlearningRequestedConsumer> logger) : IConsumer<Batch<UnlearningRequested>>
{
    public async Task Consume(ConsumeContext<Batch<UnlearningRequested>> context)
    {
        using var inFlight = metrics.TrackBatchInFlight();
        metrics.ObserveBatch(context.Message.Length);
        var batch = new List<PendingRequest>(context.Message.Length);
        foreach (var item in context.Message)
        {
            metrics.RequestReceived(item.Message.Task);
            batch.Add(new PendingRequest(item.Message, PublishedAt(item)));
        }

        // On the last retry the batch service answers what still fails instead of throwing (WorkerOptions.Retries).
        var outcome = await service.ApplyAsync(batch, lastAttempt: context.GetRetryAttempt() >= options.Value.Retries, context.CancellationToken);

        // Hostile bodies may lack a requestId; their failures still name the task they claimed, when they can.
        var taskOf = batch.Where(b => b.Request.RequestId is not null).DistinctBy(b => b.Request.RequestId, StringComparer.Ordinal)
            .ToDictionary(b => b.Request.RequestId, b => b, StringComparer.Ordinal);
        foreach (var failure in outcome.Failed)
        {
            logger.LogWarning("Request {RequestId} for {AdapterId} failed: {Code}: {Reason}", LogText.Safe(failure.RequestId), LogText.Safe(failure.AdapterId),
                failure.Code, LogText.Safe(failure.Message, 1000));
            metrics.RequestFailed(taskOf.GetValueOrDefault(failure.RequestId)?.Request.Task, failure.Code);
            await context.Publish(failure, context.CancellationToken);
        }
        foreach (var version in outcome.Published)
            await context.Publish(version, context.CancellationToken);
        var now = clock.GetUtcNow();
        foreach (var done in outcome.Completed)
        {
            var request = taskOf.GetValueOrDefault(done.RequestId);
            metrics.RequestCompleted(request?.Request.Task, request?.SentAt is { } at ? now - at : null);
            logger.LogInformation("Request {RequestId} for {AdapterId} completed in version {Version}", done.RequestId, done.AdapterId, done.Version);
            await context.Publish(done, context.CancellationToken);
        }
        if (outcome.Completed.Count > 0)
            metrics.MarkBatchCompleted(now);
    }

    /// <summary>When the request was published: the publisher's sent time (MassTransit envelope, or the AMQP timestamp
    /// property), else when this worker received it — so latency is never undercounted silently for a client that sets
    /// neither, only measured from arrival.</summary>
    private DateTimeOffset PublishedAt(ConsumeContext<UnlearningRequested> item) =>
        item.SentTime is { } sent
            ? new DateTimeOffset(DateTime.SpecifyKind(sent, DateTimeKind.Utc))
            : clock.GetUtcNow() - item.ReceiveContext.ElapsedTime;
}
