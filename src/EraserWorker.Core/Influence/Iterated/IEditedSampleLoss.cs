namespace EraserWorker.Core.Influence.Iterated;

/// <summary>
/// The exact loss of the corrected samples, ℓ'ᵢ(θ) summed over i ∈ M, as the model runtime computes it from their text
/// (docs/spec.md §1.6). θ is in the cache's parameter order. Implementations must be deterministic: the same θ gives
/// the same value, gradient and curvature rows bit for bit (sampled labels are seeded by sample id, not by call), so
/// the iterated update stays a pure function of (base, cache, edit set, settings).
/// </summary>
public interface IEditedSampleLoss
{
    /// <summary>The corrected samples this loss covers: exactly the replaced ids of the edit set.</summary>
    IReadOnlyList<string> SampleIds { get; }

    /// <summary>Σᵢ ℓ'ᵢ(θ): one forward pass per sample, no gradient.</summary>
    double Value(double[] theta);

    /// <summary>Value, gradient Σᵢ ∇ℓ'ᵢ(θ) and one Gauss–Newton curvature row c'ᵢ(θ) per sample (in
    /// <see cref="SampleIds"/>' order), with Σᵢ c'ᵢc'ᵢᵀ ≈ Σᵢ ∇²ℓ'ᵢ(θ) — the convention of the cache's curvature rows.</summary>
    EditedSampleEvaluation Evaluate(double[] theta);
}

/// <param name="Value">Σᵢ ℓ'ᵢ(θ).</param>
/// <param name="Gradient">Σᵢ ∇ℓ'ᵢ(θ), length P.</param>
/// <param name="CurvatureRows">One row c'ᵢ(θ) of length P per corrected sample.</param>
public sealed record EditedSampleEvaluation(double Value, double[] Gradient, IReadOnlyList<double[]> CurvatureRows);
