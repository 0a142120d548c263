using EraserWorker.Core.Formats.GradientCaches;

namespace EraserWorker.Core.Formats.KroneckerFactors;

/// <summary>
/// The EK-FAC factors of one LoRA matrix treated as a linear layer W [d_out, d_in] (A: [r, in]; B: [out, r]):
/// <see cref="InputBasis"/> Q_A (eigenvectors of the input-activation covariance, columns, [d_in, d_in]),
/// <see cref="OutputBasis"/> Q_S (eigenvectors of the output-gradient covariance, [d_out, d_out]) and the eigenvalue
/// corrections <see cref="Eigenvalues"/> Λ [d_out, d_in]; all row-major float32. The module's slice of a gradient row,
/// starting at <see cref="Offset"/>, is its gradient matrix G [d_out, d_in] row-major, and the curvature it stands for is
/// (Q_S ⊗ Q_A) diag(vec Λ) (Q_S ⊗ Q_A)ᵀ in that row-major vectorisation.
/// </summary>
public sealed record KfacModule(string Parameter, int OutDim, int InDim, long Offset, float[] InputBasis, float[] OutputBasis, float[] Eigenvalues)
{
    /// <summary>d_out × d_in: the module's elements in θ.</summary>
    public long Count => (long)OutDim * InDim;

    /// <summary>The cache parameter this module is.</summary>
    public ParameterSpec Spec => new(Parameter, [OutDim, InDim]);
}
