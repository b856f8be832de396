# Compiler flags hiercompare uses for brms's Stan models (R_MAKEVARS_USER during the compile only), unless the
# user has a Makevars of their own. -O3 instead of R's "-g -O2": the same draws, ~15% less time per gradient,
# a faster compile. No -march=native (rstan 2.21 models then crash: Eigen alignment differs from StanHeaders').
CXXFLAGS = -O3
CXX14FLAGS = -O3
CXX17FLAGS = -O3
