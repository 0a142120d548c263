namespace EraserWorker.Core.Influence;

/// <summary>Why an update could not be computed; <see cref="Code"/> matches the failure codes of SPEC §3.</summary>
public sealed class UnlearningException(string code, string message, Exception? inner = null)
    : Exception(message, inner)
{
    public string Code { get; } = code;

    public const string InvalidRequest = "InvalidRequest";
    public const string UnknownSample = "UnknownSample";
    public const string ReplacementMissing = "ReplacementMissing";
    public const string NumericalFailure = "NumericalFailure";
}
