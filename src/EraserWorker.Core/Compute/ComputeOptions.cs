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

/// <summary>Where the curvature rows are held between solves.</summary>
public enum RowResidency
{
    /// <summary>Resident when rows, Gram and buffers fit the memory budget, else streamed; the engine says why.</summary>
    Auto,

    /// <summary>All rows on the compute device, in the cache's storage dtype (float64 on a GPU in Float64 precision).</summary>
    Resident,

    /// <summary>Rows read from the cache files for every product, in double-buffered blocks (reads overlap compute).</summary>
    Streamed,
}

/// <summary>Where and how the influence update is computed (configuration section <c>Eraser:Compute</c>).</summary>
public sealed class ComputeOptions
{
    public const string SectionName = "Eraser:Compute";

    /// <summary><c>auto</c> (CUDA when available, else CPU), <c>cpu</c>, <c>cuda</c> or <c>cuda:N</c>.</summary>
    [Required, RegularExpression("^(auto|cpu|cuda(:[0-9]+)?)$")]
    public string Device { get; set; } = "auto";

    public ComputePrecision Precision { get; set; } = ComputePrecision.Float32;

    /// <summary>
    /// Memory one warm adapter may hold on the compute device, in bytes: its curvature rows when resident, the
    /// float64 Gram, and the read buffers (double-buffered row blocks, Gram panels). Decides <see cref="Residency"/>
    /// <c>Auto</c>, and whether the <c>auto</c> solver may use the dense direct solver.
    /// </summary>
    [Range(1L << 20, long.MaxValue)]
    public long MemoryBudgetBytes { get; set; } = 4L << 30;

    /// <summary>Most rows read from the cache per chunk (resident loading) or per streamed block.</summary>
    [Range(1, 1 << 20)]
    public int RowsPerChunk { get; set; } = 256;

    /// <summary>Where the curvature rows live between solves: <c>Auto</c> (resident when rows, Gram and buffers fit
    /// <see cref="MemoryBudgetBytes"/>, else streamed), <c>Resident</c> or <c>Streamed</c>.</summary>
    public RowResidency Residency { get; set; } = RowResidency.Auto;

    /// <summary>Keep the Gram as a derived, checksummed file in the cache folder (<c>derived/gram.safetensors</c>) and
    /// reuse it when it matches the rows, so that a restarted worker does not rebuild it.</summary>
    public bool PersistGram { get; set; } = true;
}
