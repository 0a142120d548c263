using EraserWorker.Contracts;

namespace EraserWorker.Core.Influence;

/// <summary>
/// Why an update could not be computed or was refused. <see cref="Code"/> is one of <see cref="FailureCodes"/>
/// (SPEC §3): the CLI prints it as <c>eraser: Code: message</c>, the worker publishes it in <c>unlearning-failed</c>.
/// </summary>
public sealed class UnlearningException : Exception
{
    public UnlearningException(string code, string message, Exception? inner = null)
        : base(message, inner)
    {
        if (!FailureCodes.All.Contains(code))
            throw new ArgumentException($"'{code}' is not a failure code of SPEC §3.", nameof(code));
        Code = code;
    }

    public string Code { get; }

    /// <summary>The figures of a solve refused by <see cref="SolveAcceptance"/>, else null.</summary>
    public SolverReport? Report { get; init; }
}
