namespace EraserWorker.Models.Tests.TestSupport;

public static class Vectors
{
    public static double Dot(ReadOnlySpan<double> a, ReadOnlySpan<double> b)
    {
        double s = 0;
        for (int i = 0; i < a.Length; i++)
            s += a[i] * b[i];
        return s;
    }

    public static double Norm(ReadOnlySpan<double> a) => Math.Sqrt(Dot(a, a));

    public static double RelativeError(ReadOnlySpan<double> actual, ReadOnlySpan<double> expected)
    {
        double d = 0;
        for (int i = 0; i < actual.Length; i++)
            d += (actual[i] - expected[i]) * (actual[i] - expected[i]);
        return Math.Sqrt(d) / Math.Max(Norm(expected), 1e-300);
    }

    public static double[] Axpy(double a, ReadOnlySpan<double> x, ReadOnlySpan<double> y)
    {
        var r = new double[y.Length];
        for (int i = 0; i < r.Length; i++)
            r[i] = a * x[i] + y[i];
        return r;
    }

    public static double[] Random(int n, int seed, double scale = 1)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => scale * (random.NextDouble() * 2 - 1)).ToArray();
    }
}
