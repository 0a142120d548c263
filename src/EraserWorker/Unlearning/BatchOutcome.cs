using EraserWorker.Contracts;

namespace EraserWorker.Unlearning;

/// <summary>The events one batch produces, published only after the head has moved (or the requests were found applied).</summary>
public sealed record BatchOutcome(
    IReadOnlyList<UnlearningCompleted> Completed,
    IReadOnlyList<UnlearningFailed> Failed,
    AdapterVersionPublished? Published);
