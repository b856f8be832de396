# The R package's tests, run by R CMD check (`make r-check`). The Python tests beside this file are not part of
# the R package (.Rbuildignore). Tests that need the Python package skip, saying why, where it is not found:
# set HIERCOMPARE_VENV to a checkout's .venv (make r-check does).
library(testthat)
library(hiercompare)

test_check("hiercompare")
