using System.ComponentModel.DataAnnotations;

namespace EraserWorker.Core.Compute;

/// <summary>Arithmetic used by the solvers. Storage of the cache is independent (F32/F16/BF16).</summary>
public enum ComputePrecision
{
    /// <summary>Curvature rows held and multiplied in float32; Gram, vectors and reductions in float64.</summary>
    Float32,

    /// <summary>Everything in float64: twice the memory and time, for exactness checks and small problems.</summary>
    Float64,
}

/// <summary>Where and how the influence update is computed (configuration section <c>Eraser:Compute</c>).</summary>
public sealed class ComputeOptions
{
    public const string SectionName = "Eraser:Compute";

    /// <summary><c>auto</c> (CUDA when available, else CPU), <c>cpu</c>, <c>cuda</c> or <c>cuda:N</c>.</summary>
    [Required, RegularExpression("^(auto|cpu|cuda(:[0-9]+)?)$")]
    public string Device { get; set; } = "auto";

    public ComputePrecision Precision { get; set; } = ComputePrecision.Float32;

    /// <summary>Memory the <c>auto</c> solver may spend on dense matrices (Gram or P×P), in bytes.</summary>
    [Range(1L << 20, long.MaxValue)]
    public long MemoryBudgetBytes { get; set; } = 4L << 30;

    /// <summary>Rows read from the cache per streamed chunk.</summary>
    [Range(1, 1 << 20)]
    public int RowsPerChunk { get; set; } = 256;
}
