namespace EraserWorker.Core.Influence.Iterated;

/// <summary>How an update was computed (docs/spec.md §1.6). F is the hybrid edited objective relative to F(θ₀) = 0.</summary>
/// <param name="Method"><c>one-step</c> or <c>iterated</c>.</param>
/// <param name="StopReason">Why it stopped: <c>converged-gradient</c>, <c>converged-decrease</c>, <c>max-iterations</c>,
/// <c>no-decrease</c> (no trial step lowered F), <c>one-step</c> (asked for), <c>no-texts</c> (replacements given as rows
/// only: one step), <c>no-edits</c>.</param>
/// <param name="Iterations">Accepted steps (1 for one step, 0 without edits).</param>
/// <param name="Objective">F after each accepted step (empty for one step: F is not evaluated).</param>
/// <param name="FinalStepNorm">‖θ_k − θ_{k−1}‖ of the last accepted step.</param>
/// <param name="UpdateNorm">‖θ' − θ₀‖.</param>
/// <param name="PredictedEditedLossChange">The first-order change of the edited samples' loss,
/// Σ_{i∈R} gᵢᵀ(θ' − θ₀) + Σ_{i∈M} g'ᵢᵀ(θ' − θ₀) with g'ᵢ the corrected sample's gradient at θ₀ (cached or recomputed).</param>
public sealed record UpdateReport(string Method, string StopReason, int Iterations, IReadOnlyList<double> Objective,
    double FinalStepNorm, double UpdateNorm, double PredictedEditedLossChange)
{
    /// <summary>The actual change of the corrected samples' exact loss, Σ_{i∈M} ℓ'ᵢ(θ') − ℓ'ᵢ(θ₀); null for one step.</summary>
    public double? EditedLossChange { get; init; }

    /// <summary>Trial steps rejected because they did not lower F enough.</summary>
    public int RejectedSteps { get; init; }

    /// <summary>‖∇F(θ')‖ / ‖∇F(θ₀)‖ when it was evaluated.</summary>
    public double? RelativeGradient { get; init; }

    /// <summary>The Levenberg–Marquardt damping μ in force at the end (0: pure Gauss–Newton).</summary>
    public double TrustDamping { get; init; }

    /// <summary>Linear solves made (accepted and rejected trials).</summary>
    public int Solves { get; init; }

    public double Seconds { get; init; }
}
