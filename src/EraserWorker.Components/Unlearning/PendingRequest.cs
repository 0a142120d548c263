using EraserWorker.Contracts;

namespace EraserWorker.Components.Unlearning;

/// <summary>A request of a batch with the time it was published (for latency), as the consumer received it.</summary>
/// <param name="SentAt">The publisher's sent time, else the time of arrival; null when unknown.</param>
public sealed record PendingRequest(UnlearningRequested Request, DateTimeOffset? SentAt);
