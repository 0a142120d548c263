using EraserWorker.Demo;
using EraserWorker.Hosting;

var builder = WebApplication.CreateBuilder(DemoMode.Expand(args));
builder.AddEraserWorker();

var app = builder.Build();
app.MapEraserEndpoints();
app.Run();
