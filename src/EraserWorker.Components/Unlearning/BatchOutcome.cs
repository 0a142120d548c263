using EraserWorker.Contracts;

namespace EraserWorker.Components.Unlearning;

/// <summary>The events one batch produces, published by the consumer only after the versions they announce are the head
/// (or the requests were found applied), and before the batch is acknowledged.</summary>
/// <param name="Published">New versions, and — at least once — versions that applied redelivered requests (the worker that
/// applied them may have died between moving the head and publishing; consumers dedupe by adapterId and version).</param>
public sealed record BatchOutcome(
    IReadOnlyList<UnlearningCompleted> Completed,
    IReadOnlyList<UnlearningFailed> Failed,
    IReadOnlyList<AdapterVersionPublished> Published)
{
    public static BatchOutcome Empty { get; } = new([], [], []);

    public static BatchOutcome Failures(IEnumerable<UnlearningFailed> failed) => new([], failed.ToList(), []);

    public BatchOutcome Add(BatchOutcome other) =>
        new([.. Completed, .. other.Completed], [.. Failed, .. other.Failed], [.. Published, .. other.Published]);
}
