using EraserWorker.Core.Compute;
using TorchSharp;
using static TorchSharp.torch;

namespace EraserWorker.Core.Influence;

/// <summary>
/// One edited system H'x = b (SPEC §1) over the warm curvature rows, without copying them: excluded rows
/// (removed or replaced) are masked out of every product, replacement rows are held separately.
/// D_A denotes the stacked active rows followed by the replacement rows. Vectors are float64.
/// All tensors belong to the caller's dispose scope.
/// </summary>
internal sealed class EditedProblem
{
    public EditedProblem(CurvatureRows rows, Tensor keep, Tensor? replacementRows, Tensor b, double lambda, double damping)
    {
        Rows = rows;
        Keep = keep;
        ReplacementRows = replacementRows;
        B = b;
        Lambda = lambda;
        Damping = damping;
        ActiveIndices = keep.nonzero().flatten();
        _precise = PreciseProducts.Supports(rows.Rows);
        KeepValues = _precise ? keep.data<double>().ToArray() : [];
    }

    private readonly bool _precise;

    /// <summary><see cref="Keep"/> as an array, for the CPU kernels.</summary>
    private double[] KeepValues { get; }

    public CurvatureRows Rows { get; }

    /// <summary>1 for active rows, 0 for removed or replaced ones (float64, length n).</summary>
    public Tensor Keep { get; }

    /// <summary>Indices of the active rows (int64).</summary>
    public Tensor ActiveIndices { get; }

    /// <summary>c'ᵢ of the replaced samples (m' × P, compute dtype), or null.</summary>
    public Tensor? ReplacementRows { get; }

    public Tensor B { get; }

    public double Lambda { get; }

    public double Damping { get; }

    public long ActiveCount => ActiveIndices.shape[0];

    public long ReplacementCount => ReplacementRows?.shape[0] ?? 0;

    /// <summary>Rows of D_A: active plus replacement rows.</summary>
    public long SystemRows => ActiveCount + ReplacementCount;

    public long Parameters => Rows.Parameters;

    /// <summary>D_A v, returned in the full layout: n entries (zeros at excluded rows) then m' entries. On CPU float32
    /// rows the products and sums are float64 (PreciseProducts), which is also faster there than BLAS gemv.</summary>
    public Tensor Forward(Tensor v)
    {
        Tensor active;
        if (_precise)
            active = torch.tensor(PreciseProducts.Project(Rows.Rows, KeepValues, v.cpu().data<double>().ToArray()), device: v.device);
        else
            active = Rows.Rows.mv(v.to(Rows.DType)).to(ScalarType.Float64) * Keep;
        return ReplacementRows is null ? active : torch.cat([active, ReplacementRows.to(ScalarType.Float64).mv(v)]);
    }

    /// <summary>D_Aᵀ y for y in the full layout of <see cref="Forward"/>.</summary>
    public Tensor Backward(Tensor y)
    {
        long n = Rows.Count;
        var ya = y.narrow(0, 0, n) * Keep;
        var result = _precise
            ? torch.tensor(PreciseProducts.Combine(Rows.Rows, ya.cpu().data<double>().ToArray()), device: y.device)
            : Rows.Rows.t().mv(ya.to(Rows.DType)).to(ScalarType.Float64);
        if (ReplacementRows is not null)
            result = result.Plus(ReplacementRows.to(ScalarType.Float64).t().mv(y.narrow(0, n, ReplacementCount)));
        return result;
    }

    /// <summary>H'v = D_Aᵀ D_A v + λv (one fused pass over the rows where the precise kernels apply).</summary>
    public Tensor Hessian(Tensor v) => _precise ? HessianPrecise(v) : Backward(Forward(v)).Plus(v.Times(Lambda));

    /// <summary>
    /// H'v with every product in float64, one pass over the rows (each block upcast once and used for both
    /// D_A v and D_Aᵀ(·)). Residuals use it, so what is reported — and what refinement corrects — is not the
    /// float32 products' own rounding.
    /// </summary>
    public Tensor HessianPrecise(Tensor v)
    {
        if (Rows.DType == ScalarType.Float64)
            return Hessian(v);
        if (PreciseProducts.Supports(Rows.Rows))
        {
            var dataTerm = PreciseProducts.DataTerm(Rows.Rows, KeepValues, v.cpu().data<double>().ToArray());
            var precise = torch.tensor(dataTerm, device: v.device).Plus(v.Times(Lambda));
            if (ReplacementRows is not null)
            {
                var rep64 = ReplacementRows.to(ScalarType.Float64);
                precise.AddInPlace(rep64.t().mv(rep64.mv(v)));
            }
            return precise;
        }
        var result = v.Times(Lambda);
        long n = Rows.Count, step = Math.Max(1, (8L << 20) / Math.Max(1, Parameters));
        for (long first = 0; first < n; first += step)
        {
            using var scope = torch.NewDisposeScope();
            long count = Math.Min(step, n - first);
            var block = Rows.Rows.narrow(0, first, count).to(ScalarType.Float64);
            var projected = block.mv(v) * Keep.narrow(0, first, count);
            result.AddInPlace(block.t().mv(projected));
        }
        if (ReplacementRows is not null)
        {
            var rep = ReplacementRows.to(ScalarType.Float64);
            result.AddInPlace(rep.t().mv(rep.mv(v)));
        }
        return result;
    }

    /// <summary>b − H'x in float64.</summary>
    public Tensor Residual(Tensor x) => B - HessianPrecise(x);

    /// <summary>‖H'x − b‖ / ‖b‖, with float64 products.</summary>
    public double RelativeResidual(Tensor x)
    {
        double bNorm = B.norm().item<double>();
        double rNorm = Residual(x).norm().item<double>();
        return bNorm == 0 ? rNorm : rNorm / bNorm;
    }

    /// <summary>The diagonal of H' (Jacobi preconditioner).</summary>
    public Tensor Diagonal()
    {
        var diag = Rows.ColumnSquares().clone();
        var excluded = Keep.EqualTo(0).nonzero().flatten();
        if (excluded.shape[0] > 0)
        {
            var rows = Rows.Rows.index_select(0, excluded).to(ScalarType.Float64);
            diag -= (rows * rows).sum(0);
        }
        if (ReplacementRows is not null)
        {
            var rep = ReplacementRows.to(ScalarType.Float64);
            diag = diag.Plus((rep * rep).sum(0));
        }
        return diag.ClampMin(0).Plus(Lambda);
    }

    /// <summary>Picks rows of D_A (indices into the stacked active + replacement list) as a dense block.</summary>
    public Tensor SystemRowsAt(Tensor systemIndices)
    {
        var isActive = systemIndices.LessThan(ActiveCount);
        var activePart = systemIndices.masked_select(isActive);
        var block = Rows.Rows.index_select(0, ActiveIndices.index_select(0, activePart));
        if (ReplacementRows is null)
            return block;
        var replacementPart = systemIndices.masked_select(isActive.logical_not()).Minus(ActiveCount);
        return torch.cat([block, ReplacementRows.index_select(0, replacementPart)]);
    }
}
