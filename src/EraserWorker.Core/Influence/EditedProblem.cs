using EraserWorker.Core.Compute;
using TorchSharp;
using static TorchSharp.torch;

namespace EraserWorker.Core.Influence;

/// <summary>
/// One edited system H'x = b (SPEC §1) over the warm curvature rows, without copying them: excluded rows
/// (removed or replaced) are masked out of every product, replacement rows are held separately.
/// D_A denotes the stacked active rows followed by the replacement rows. Vectors are float64.
/// All tensors belong to the caller's dispose scope. Each product over the rows is one pass (resident or streamed).
/// </summary>
internal sealed class EditedProblem
{
    public EditedProblem(CurvatureRows rows, Tensor keep, Tensor? replacementRows, Tensor b, double lambda, double damping,
        CancellationToken cancellation = default)
    {
        Rows = rows;
        Keep = keep;
        ReplacementRows = replacementRows;
        B = b;
        Lambda = lambda;
        Damping = damping;
        Cancellation = cancellation;
        KeepValues = keep.cpu().data<double>().ToArray();
        ActiveRows = Enumerable.Range(0, KeepValues.Length).Where(i => KeepValues[i] != 0).Select(i => (long)i).ToArray();
        ActiveIndices = torch.tensor(ActiveRows, device: keep.device);
    }

    public CurvatureRows Rows { get; }

    /// <summary>1 for active rows, 0 for removed or replaced ones (float64, length n).</summary>
    public Tensor Keep { get; }

    /// <summary><see cref="Keep"/> as an array.</summary>
    public double[] KeepValues { get; }

    /// <summary>Indices of the active rows (int64).</summary>
    public Tensor ActiveIndices { get; }

    /// <summary><see cref="ActiveIndices"/> as an array.</summary>
    public long[] ActiveRows { get; }

    /// <summary>c'ᵢ of the replaced samples (m' × P, compute dtype), or null.</summary>
    public Tensor? ReplacementRows { get; }

    public Tensor B { get; }

    public double Lambda { get; }

    public double Damping { get; }

    public CancellationToken Cancellation { get; }

    public long ActiveCount => ActiveRows.Length;

    public long ReplacementCount => ReplacementRows?.shape[0] ?? 0;

    /// <summary>Rows of D_A: active plus replacement rows.</summary>
    public long SystemRows => ActiveCount + ReplacementCount;

    public long Parameters => Rows.Parameters;

    /// <summary>Whether <see cref="Hessian"/> already has float64 products (then it is the precise one).</summary>
    public bool PreciseProducts => Rows.PreciseProducts;

    /// <summary>D_A v, returned in the full layout: n entries (zeros at excluded rows) then m' entries.</summary>
    public Tensor Forward(Tensor v)
    {
        var dots = Rows.Project([Array(v)], Cancellation)[0];
        for (int i = 0; i < dots.Length; i++)
            dots[i] *= KeepValues[i];
        var active = torch.tensor(dots, device: v.device);
        return ReplacementRows is null ? active : torch.cat([active, ReplacementRows.to(ScalarType.Float64).mv(v)]);
    }

    /// <summary>D_Aᵀ y for y in the full layout of <see cref="Forward"/>.</summary>
    public Tensor Backward(Tensor y)
    {
        long n = Rows.Count;
        var ya = Array(y.narrow(0, 0, n) * Keep);
        var result = torch.tensor(Rows.Combine([ya], Cancellation)[0], device: y.device);
        if (ReplacementRows is not null)
            result = result.Plus(ReplacementRows.to(ScalarType.Float64).t().mv(y.narrow(0, n, ReplacementCount)));
        return result;
    }

    /// <summary>H'v = D_Aᵀ D_A v + λv, one fused pass over the rows (float64 products on the CPU).</summary>
    public Tensor Hessian(Tensor v) => Apply(v, precise: false);

    /// <summary>H'v with every product in float64, one pass. Residuals use it, so what is reported — and what
    /// refinement corrects — is not float32 products' own rounding.</summary>
    public Tensor HessianPrecise(Tensor v) => Apply(v, precise: true);

    private Tensor Apply(Tensor v, bool precise)
    {
        var result = torch.tensor(Rows.DataTerm(KeepValues, Array(v), precise, Cancellation), device: v.device).Plus(v.Times(Lambda));
        if (ReplacementRows is not null)
        {
            var rep = precise || PreciseProducts ? ReplacementRows.to(ScalarType.Float64) : ReplacementRows;
            result.AddInPlace(rep.t().mv(rep.mv(v.to(rep.dtype))).to(ScalarType.Float64));
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
        var diag = torch.tensor(Rows.ColumnSquares(Cancellation), device: B.device);
        var excluded = Enumerable.Range(0, KeepValues.Length).Where(i => KeepValues[i] == 0).Select(i => (long)i).ToArray();
        if (excluded.Length > 0)
        {
            var rows = Rows.RowsAt(excluded).to(ScalarType.Float64);
            diag -= (rows * rows).sum(0);
        }
        if (ReplacementRows is not null)
        {
            var rep = ReplacementRows.to(ScalarType.Float64);
            diag = diag.Plus((rep * rep).sum(0));
        }
        return diag.ClampMin(0).Plus(Lambda);
    }

    /// <summary>Picks rows of D_A (indices into the stacked active + replacement list) as a dense block, compute dtype.</summary>
    public Tensor SystemRowsAt(Tensor systemIndices)
    {
        var picked = systemIndices.cpu().data<long>().ToArray();
        var activePicked = picked.Where(i => i < ActiveCount).Select(i => ActiveRows[i]).ToArray();
        var block = activePicked.Length > 0
            ? Rows.RowsAt(activePicked)
            : torch.empty(0, Parameters, dtype: Rows.ComputeType, device: Rows.Device);
        if (ReplacementRows is null)
            return block;
        var replacementPart = systemIndices.masked_select(systemIndices.GreaterOrEqual(ActiveCount)).Minus(ActiveCount);
        return torch.cat([block, ReplacementRows.index_select(0, replacementPart)]);
    }

    private static double[] Array(Tensor v) => v.cpu().data<double>().ToArray();
}
