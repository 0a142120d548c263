using EraserWorker.Contracts;

namespace EraserWorker.Unlearning;

/// <summary>The events one batch produces, published only after the head has moved (or the requests were found applied).
/// <paramref name="Reannounced"/>: the versions that applied the batch's redelivered, already-applied requests, announced
/// again (at least once: the worker that applied them may have died between moving the head and publishing).</summary>
public sealed record BatchOutcome(
    IReadOnlyList<UnlearningCompleted> Completed,
    IReadOnlyList<UnlearningFailed> Failed,
    AdapterVersionPublished? Published,
    IReadOnlyList<AdapterVersionPublished>? Reannounced = null);
