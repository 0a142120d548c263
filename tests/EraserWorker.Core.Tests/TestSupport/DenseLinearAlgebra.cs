namespace EraserWorker.Core.Tests.TestSupport;

/// <summary>Plain double-precision linear algebra, independent of TorchSharp: the oracle's arithmetic.</summary>
public static class DenseLinearAlgebra
{
    /// <summary>Ridge regression solved from scratch: argmin Σ (xᵢᵀθ − yᵢ)²/2 + (l2/2)‖θ‖², i.e.
    /// (Σ xᵢxᵢᵀ + l2·I) θ = Σ yᵢxᵢ — exact retraining on the given samples.</summary>
    public static double[] RidgeSolve(IEnumerable<(double[] X, double Y)> samples, int p, double l2)
    {
        var h = new double[p, p];
        var rhs = new double[p];
        foreach (var (x, y) in samples)
            for (int a = 0; a < p; a++)
            {
                rhs[a] += x[a] * y;
                for (int b = 0; b < p; b++)
                    h[a, b] += x[a] * x[b];
            }
        for (int a = 0; a < p; a++)
            h[a, a] += l2;
        return SolveSpd(h, rhs);
    }

    /// <summary>Solves A x = b for symmetric positive definite A by Cholesky.</summary>
    public static double[] SolveSpd(double[,] a, double[] b)
    {
        int n = b.Length;
        var l = new double[n, n];
        for (int i = 0; i < n; i++)
            for (int j = 0; j <= i; j++)
            {
                double sum = a[i, j];
                for (int k = 0; k < j; k++)
                    sum -= l[i, k] * l[j, k];
                if (i == j)
                {
                    if (sum <= 0)
                        throw new InvalidOperationException("matrix not positive definite");
                    l[i, i] = Math.Sqrt(sum);
                }
                else
                {
                    l[i, j] = sum / l[j, j];
                }
            }
        var y = new double[n];
        for (int i = 0; i < n; i++)
        {
            double sum = b[i];
            for (int k = 0; k < i; k++)
                sum -= l[i, k] * y[k];
            y[i] = sum / l[i, i];
        }
        var x = new double[n];
        for (int i = n - 1; i >= 0; i--)
        {
            double sum = y[i];
            for (int k = i + 1; k < n; k++)
                sum -= l[k, i] * x[k];
            x[i] = sum / l[i, i];
        }
        return x;
    }

    public static double Dot(double[] a, double[] b)
    {
        double s = 0;
        for (int i = 0; i < a.Length; i++)
            s += a[i] * b[i];
        return s;
    }

    public static double Norm(double[] a) => Math.Sqrt(Dot(a, a));

    public static double[] Subtract(double[] a, double[] b) => a.Select((v, i) => v - b[i]).ToArray();

    public static double Distance(double[] a, double[] b) => Norm(Subtract(a, b));
}
