using EraserWorker.Core.Compute;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Influence.Rows;
using TorchSharp;
using static TorchSharp.torch;

namespace EraserWorker.Core.Influence;

/// <summary>
/// The cache's curvature rows C (n × P) behind a <see cref="RowSource"/> — resident or streamed, as
/// <see cref="RowPlan"/> decided — with the products the solvers need and what is derived from the rows once and
/// reused by every solve: row and column sums of squares, and the float64 Gram C Cᵀ (built on first need, or loaded
/// from its derived file when that matches the rows). Vectors are float64 arrays in row or parameter order.
/// Owns its tensors; they live outside any dispose scope.
/// </summary>
internal sealed class CurvatureRows : IDisposable
{
    private readonly string? _gramPath;
    private readonly GradientCache _cache;
    private Tensor? _gram;
    private double[]? _rowSquares;
    private double[]? _columnSquares;

    private CurvatureRows(RowSource source, GradientCache cache, ComputeOptions options)
    {
        Source = source;
        _cache = cache;
        _gramPath = options.PersistGram ? GramArtefact.PathFor(cache.Directory) : null;
        ComputeType = ComputeDevice.ScalarType(options.Precision);
        // The span kernels: float64 products and sums over rows in their storage dtype, on the CPU.
        PreciseKernels = source.Device.type == DeviceType.CPU && RowKernels.StorageName(source.HoldType) is not null;
        GramStatus = _gramPath is null ? "not persisted" : "not needed yet";
    }

    public RowSource Source { get; }

    public RowPlan Plan => Source.Plan;

    public MemoryLedger Memory => Source.Memory;

    public long Count => Source.Count;

    public long Parameters => Source.Parameters;

    public Device Device => Source.Device;

    /// <summary>The dtype of vectors handed to tensor products and of replacement rows: float32 or float64.</summary>
    public ScalarType ComputeType { get; }

    /// <summary>Whether every product is float64 (the CPU span kernels, or float64 compute on a device).</summary>
    public bool PreciseProducts => PreciseKernels || ComputeType == ScalarType.Float64;

    private bool PreciseKernels { get; }

    public bool HasGram => _gram is not null;

    /// <summary>Where the Gram came from: built, loaded from its derived file, or why not.</summary>
    public string GramStatus { get; private set; }

    /// <summary>The derived Gram file this process built and saved (so that it can be kept where the next process finds
    /// it), or null: not built here, not persisted, or not saved.</summary>
    public string? SavedGramPath { get; private set; }

    public long BytesHeld => Memory.Held;

    /// <summary>Plans the residency and loads (resident) or opens (streamed) the rows of <paramref name="cache"/>.</summary>
    public static CurvatureRows Load(GradientCache cache, ComputeOptions options, Device device,
        IProgress<EngineProgress>? progress, CancellationToken cancellation)
    {
        var plan = RowPlan.Choose(cache.RowCount, cache.ParameterCount, cache.StorageDType, cache.ElementSize, options,
            device.type == DeviceType.CPU);
        return Load(cache, options, device, plan, progress, cancellation);
    }

    /// <summary>Loads with a given plan (tests use it to hold float64 rows on the CPU, which takes the tensor
    /// products a GPU uses).</summary>
    internal static CurvatureRows Load(GradientCache cache, ComputeOptions options, Device device, RowPlan plan,
        IProgress<EngineProgress>? progress, CancellationToken cancellation)
    {
        var memory = new MemoryLedger();
        RowSource source = plan.Residency == RowResidency.Resident
            ? ResidentRows.Load(cache, plan, device, memory, options.RowsPerChunk, progress, cancellation)
            : new StreamedRows(cache, plan, device, memory);
        return new CurvatureRows(source, cache, options);
    }

    /// <summary>dots[k] = C vectors[k] (n entries each, no row excluded). One pass.</summary>
    public double[][] Project(IReadOnlyList<double[]> vectors, CancellationToken cancellation)
    {
        var dots = vectors.Select(_ => new double[Count]).ToArray();
        Source.ForEachBlock((first, block) =>
        {
            if (PreciseKernels)
            {
                RowKernels.Project(block, first, vectors, dots);
                return;
            }
            using var scope = torch.NewDisposeScope();
            var rows = block.to(ComputeType);
            for (int k = 0; k < vectors.Count; k++)
                rows.mv(Vector(vectors[k], ComputeType)).to(ScalarType.Float64).cpu().data<double>().CopyTo(dots[k], first);
        }, cancellation);
        return dots;
    }

    /// <summary>result[k] = Cᵀ coefficients[k] (P entries each). One pass.</summary>
    public double[][] Combine(IReadOnlyList<double[]> coefficients, CancellationToken cancellation)
    {
        var result = coefficients.Select(_ => new double[Parameters]).ToArray();
        if (PreciseKernels)
        {
            Source.ForEachBlock((first, block) => RowKernels.Combine(block, first, coefficients, result), cancellation);
            return result;
        }
        using var outer = torch.NewDisposeScope();
        var sums = coefficients.Select(_ => torch.zeros(Parameters, dtype: ScalarType.Float64, device: Device)).ToArray();
        Source.ForEachBlock((first, block) =>
        {
            using var scope = torch.NewDisposeScope();
            var rows = block.to(ComputeType);
            for (int k = 0; k < coefficients.Count; k++)
            {
                var y = Vector(coefficients[k].AsSpan(first, (int)rows.shape[0]).ToArray(), ComputeType);
                sums[k].AddInPlace(rows.t().mv(y).to(ScalarType.Float64));
            }
        }, cancellation);
        for (int k = 0; k < sums.Length; k++)
            sums[k].cpu().data<double>().CopyTo(result[k], 0);
        return result;
    }

    /// <summary>Σᵢ keepᵢ cᵢ(cᵢᵀv): one pass, each block used for its dot products and then for the combination.
    /// <paramref name="precise"/> asks for float64 products where the compute dtype is float32 on a device.</summary>
    public double[] DataTerm(double[] keep, double[] v, bool precise, CancellationToken cancellation)
    {
        var result = new double[Parameters];
        if (PreciseKernels)
        {
            var dots = new[] { new double[Count] };
            Source.ForEachBlock((first, block) =>
            {
                RowKernels.Project(block, first, [v], dots);
                for (int i = 0; i < block.shape[0]; i++)
                    dots[0][first + i] *= keep[first + i];
                RowKernels.Combine(block, first, dots, [result]);
            }, cancellation);
            return result;
        }
        var type = precise ? ScalarType.Float64 : ComputeType;
        using var outer = torch.NewDisposeScope();
        var sum = torch.zeros(Parameters, dtype: ScalarType.Float64, device: Device);
        var x = Vector(v, type);
        Source.ForEachBlock((first, block) =>
        {
            using var scope = torch.NewDisposeScope();
            var rows = block.to(type);
            var keepBlock = Vector(keep.AsSpan(first, (int)rows.shape[0]).ToArray(), type);
            sum.AddInPlace(rows.t().mv(rows.mv(x) * keepBlock).to(ScalarType.Float64));
        }, cancellation);
        sum.cpu().data<double>().CopyTo(result, 0);
        return result;
    }

    /// <summary>The rows at <paramref name="rows"/> in the compute dtype, on the device (caller's dispose scope).</summary>
    public Tensor RowsAt(long[] rows)
    {
        using var picked = Source.RowsAt(rows);
        return picked.to(ComputeType);
    }

    /// <summary>
    /// ‖cᵢ‖² for every row, float64, fixed on first use: the Gram's diagonal when the Gram is at hand — or, for
    /// streamed rows whose Gram fits the budget, about to be needed anyway (building it is one read of the rows,
    /// like a dedicated pass) — else one pass shared with <see cref="ColumnSquares"/>.
    /// </summary>
    public double[] RowSquares(IProgress<EngineProgress>? progress, CancellationToken cancellation)
    {
        if (_rowSquares is not null)
            return _rowSquares;
        if (_gram is not null || (Plan.Residency == RowResidency.Streamed && Plan.GramFits))
        {
            using var scope = torch.NewDisposeScope();
            return _rowSquares = Gram(progress, cancellation).diagonal().cpu().data<double>().ToArray();
        }
        EnsureSquares(cancellation);
        return _rowSquares!;
    }

    /// <summary>Σᵢ cᵢ² per parameter over all rows, float64 (the diagonal of CᵀC).</summary>
    public double[] ColumnSquares(CancellationToken cancellation)
    {
        EnsureSquares(cancellation);
        return _columnSquares!;
    }

    private void EnsureSquares(CancellationToken cancellation)
    {
        if (_columnSquares is not null)
            return;
        var rows = new double[Count];
        var columns = new double[Parameters];
        Source.ForEachBlock((first, block) =>
        {
            if (PreciseKernels)
            {
                RowKernels.Squares(block, first, rows, columns);
                return;
            }
            using var scope = torch.NewDisposeScope();
            var b = block.to(ScalarType.Float64);
            var squared = b * b;
            squared.sum(1, type: ScalarType.Float64).cpu().data<double>().CopyTo(rows, first);
            var sums = squared.sum(0, type: ScalarType.Float64).cpu().data<double>().ToArray();
            for (long j = 0; j < Parameters; j++)
                columns[j] += sums[j];
        }, cancellation);
        _rowSquares ??= rows; // once fixed, row squares never change: the same edits give the same damping
        _columnSquares = columns;
    }

    /// <summary>
    /// C Cᵀ in float64: loaded from its derived file when that was built from exactly these rows (content digest,
    /// dtype, shape, arithmetic) and its bytes match its SHA-256; else built from column panels (one read of the rows)
    /// and saved for the next process.
    /// </summary>
    public Tensor Gram(IProgress<EngineProgress>? progress, CancellationToken cancellation)
    {
        if (_gram is not null)
            return _gram;
        string matrix = _cache.HasCurvature ? "curvature" : "gradients";
        string? rejected = null;
        if (_gramPath is not null && File.Exists(_gramPath))
        {
            // The identity needs the rows' digest: resident rows have it from loading; streamed rows compute it on
            // their first complete pass (which a solve has usually made before it needs the Gram).
            var identity = new GramArtefact.Identity(Source.EnsureDigest(cancellation), matrix, _cache.StorageDType, Count, Parameters);
            var loaded = GramArtefact.TryLoad(_gramPath, identity, Device, out rejected);
            if (loaded is not null)
            {
                Memory.Add(Plan.GramBytes);
                GramStatus = $"loaded from {_gramPath}";
                return _gram = loaded;
            }
        }
        var gram = GramBuilder.Build(Source, progress, cancellation);
        Memory.Add(Plan.GramBytes);
        _gram = gram;
        string built = rejected is null ? "built" : $"rebuilt (the saved one was {rejected})";
        if (_gramPath is null)
        {
            GramStatus = $"{built}, not persisted";
            return gram;
        }
        var digest = Source.Digest ?? Source.EnsureDigest(cancellation);
        string? failure = GramArtefact.TrySave(_gramPath, gram,
            new GramArtefact.Identity(digest, matrix, _cache.StorageDType, Count, Parameters));
        GramStatus = failure is null ? $"{built}, saved to {_gramPath}" : $"{built}; not saved ({failure})";
        SavedGramPath = failure is null ? _gramPath : null;
        return gram;
    }

    private Tensor Vector(double[] values, ScalarType type)
    {
        var t = torch.tensor(values, device: Device);
        return type == ScalarType.Float64 ? t : t.to(type);
    }

    public void Dispose()
    {
        Source.Dispose();
        if (_gram is not null)
        {
            _gram.Dispose();
            Memory.Release(Plan.GramBytes);
        }
    }
}
