using System.Text.Json.Nodes;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Formats.KroneckerFactors;
using EraserWorker.Core.Tests.TestSupport;

namespace EraserWorker.Core.Tests.Formats;

public sealed class KfacFactorsTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    // A 2×2 rotation is an orthonormal basis that is not the identity.
    private static KfacModule[] Modules() =>
    [
        new("a", 2, 2, 0, [0.6f, -0.8f, 0.8f, 0.6f], [1, 0, 0, 1], [1, 2, 3, 4]),
        new("b", 1, 2, 4, [1, 0, 0, 1], [1], [0.5f, 0]),
    ];

    private string Written()
    {
        string dir = _temp.Sub("kfac");
        KfacFactorsWriter.Write(dir, Modules(), samples: 3, dampingHint: 0.1);
        return dir;
    }

    [Fact]
    public void Written_factors_read_back_with_the_same_values_and_layout()
    {
        var factors = KfacFactors.Open(Written());
        Assert.Equal(6, factors.ParameterCount);
        Assert.Equal(3, factors.Samples);
        Assert.Equal(Modules()[0].InputBasis, factors.Modules[0].InputBasis);
        Assert.Equal(Modules()[1].Eigenvalues, factors.Modules[1].Eigenvalues);
        factors.MatchesCache([new ParameterSpec("a", [2, 2]), new ParameterSpec("b", [1, 2])], "the cache");
    }

    [Fact]
    public void A_cache_with_a_different_parameter_layout_is_refused()
    {
        var factors = KfacFactors.Open(Written());
        Assert.Throws<GradientCacheException>(() => factors.MatchesCache([new ParameterSpec("b", [1, 2]), new ParameterSpec("a", [2, 2])], "the cache"));
    }

    [Fact]
    public void A_tampered_factors_file_is_refused_by_its_checksum()
    {
        string dir = Written();
        string file = Path.Combine(dir, KfacManifest.FactorsFileName);
        var bytes = File.ReadAllBytes(file);
        bytes[^1] ^= 1;
        File.WriteAllBytes(file, bytes);
        var e = Assert.Throws<GradientCacheException>(() => KfacFactors.Open(dir));
        Assert.Contains("SHA-256", e.Message);
    }

    [Fact]
    public void An_unknown_format_is_refused()
    {
        string dir = Written();
        string path = Path.Combine(dir, KfacManifest.FileName);
        var json = JsonNode.Parse(File.ReadAllText(path))!;
        json["format"] = "eraser.kfac/v9";
        File.WriteAllText(path, json.ToJsonString());
        Assert.Throws<GradientCacheException>(() => KfacFactors.Open(dir));
    }

    [Fact]
    public void A_non_orthonormal_basis_is_refused()
    {
        string dir = _temp.Sub("bad");
        KfacFactorsWriter.Write(dir, [new KfacModule("a", 1, 2, 0, [1, 1, 0, 1], [1], [1, 1])], 1, 0);
        var e = Assert.Throws<GradientCacheException>(() => KfacFactors.Open(dir));
        Assert.Contains("orthonormal", e.Message);
    }

    [Fact]
    public void Non_finite_values_are_refused_and_nothing_is_written()
    {
        string dir = _temp.Sub("nan");
        Assert.Throws<ArgumentException>(() => KfacFactorsWriter.Write(dir, [new KfacModule("a", 1, 1, 0, [1], [1], [float.NaN])], 1, 0));
        Assert.False(Directory.Exists(dir));
        Assert.Empty(Directory.GetDirectories(_temp.Path));
    }
}
